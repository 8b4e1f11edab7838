"""Post-training objectives and estimators as pure functions of tensors and scalars.

One idea per module; variants are chosen by name through the registries in
``REGISTRIES`` (each also has a ``get_*`` that raises ``ValueError`` listing the
valid names). Token tensors are ``[B, T]`` with a bool/0-1 ``mask``.
"""

from components.algorithms.aggregate import AGGREGATIONS, aggregate_loss, get_aggregation
from components.algorithms.calibration import binary_accuracy, brier_score, expected_calibration_error
from components.algorithms.distill import DISTILL_LOSSES, distill_loss, get_distill_loss
from components.algorithms.dpo import DPO_LOSSES, dpo_loss, get_dpo_loss
from components.algorithms.grpo import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    grpo_loss,
    rloo_advantages,
    zero_variance_groups,
)
from components.algorithms.kl import KL_ESTIMATORS, get_kl_estimator, token_kl
from components.algorithms.logprobs import (
    entropy_from_logits,
    sequence_logprob,
    shift_for_causal_lm,
    token_logprobs,
)
from components.algorithms.masked import (
    fill_padding,
    last_valid_index,
    masked_mean,
    masked_sum,
    masked_var,
    whiten,
)
from components.algorithms.metrics import (
    AccuracyCI,
    accuracy_ci,
    accuracy_with_ci,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
)
from components.algorithms.oreo import OREO_MODES, oreo_policy_loss, oreo_value_loss
from components.algorithms.orpo import log_odds, orpo_loss
from components.algorithms.policy_loss import POLICY_LOSSES, get_policy_loss
from components.algorithms.ppo import gae_advantages, kl_penalty_rewards, ppo_policy_loss, value_loss
from components.algorithms.reward_model import (
    bradley_terry_loss,
    bradley_terry_ranking_loss,
    kendall_tau,
    outcome_only_labels,
    pairwise_accuracy,
    plackett_luce_loss,
    process_reward_loss,
    ranking_accuracy,
)
from components.algorithms.sft import sft_loss
from components.algorithms.trpo import TRPOStepInfo, conjugate_gradient, fisher_vector_product, trpo_step

REGISTRIES = {
    "aggregation": AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "advantage_estimator": ADVANTAGE_ESTIMATORS,
    "dpo_loss": DPO_LOSSES,
    "distill_loss": DISTILL_LOSSES,
    "policy_loss": POLICY_LOSSES,
}

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "AccuracyCI",
    "DISTILL_LOSSES",
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "OREO_MODES",
    "POLICY_LOSSES",
    "REGISTRIES",
    "TRPOStepInfo",
    "accuracy_ci",
    "accuracy_with_ci",
    "aggregate_loss",
    "binary_accuracy",
    "bradley_terry_loss",
    "bradley_terry_ranking_loss",
    "brier_score",
    "conjugate_gradient",
    "distill_loss",
    "dpo_loss",
    "drgrpo_advantages",
    "entropy_from_logits",
    "expected_calibration_error",
    "fill_padding",
    "fisher_vector_product",
    "gae_advantages",
    "get_advantage_estimator",
    "get_aggregation",
    "get_distill_loss",
    "get_dpo_loss",
    "get_kl_estimator",
    "get_policy_loss",
    "grpo_advantages",
    "grpo_loss",
    "kendall_tau",
    "kl_penalty_rewards",
    "last_valid_index",
    "log_odds",
    "maj_at_k",
    "majority_vote",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "mean_pass_at_k",
    "oreo_policy_loss",
    "oreo_value_loss",
    "orpo_loss",
    "outcome_only_labels",
    "pairwise_accuracy",
    "pass_at_k",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "process_reward_loss",
    "ranking_accuracy",
    "rloo_advantages",
    "sequence_logprob",
    "sft_loss",
    "shift_for_causal_lm",
    "token_kl",
    "token_logprobs",
    "trpo_step",
    "value_loss",
    "whiten",
    "zero_variance_groups",
]
