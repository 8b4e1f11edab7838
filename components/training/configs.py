"""The recipe sections of the stages that train more than one model at once: reward models, the
alignment methods (`alignment.<method>`) and distillation.

They live apart from the trainers (which import torch) so that loading and validating a recipe
imports no torch: an all-cached run never needs it. A name that must be in a registry of
`components.algorithms` is checked against it when a recipe sets it (pydantic does not validate
defaults), so the registry, and torch, are imported only then.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config import (AdvantageEstimator, LoraConfig, LossAggregation, Optimization, RejectionConfig,
                               RewardItem, RLConfig, RolloutConfig, Section, Source, registered)


DPOLoss = registered("DPO_LOSSES", "DPO loss")
KLEstimator = registered("KL_ESTIMATORS", "KL estimator")
DistillLoss = registered("DISTILL_LOSSES", "distillation loss")


# --------------------------------------------------------------------------- reward models


class RewardModelConfig(Optimization):
    """An outcome reward model trained on preferences (seed §2.1): a scalar head on the policy's backbone."""

    objective: Literal["bradley_terry", "plackett_luce"] = Field(  # components.training.reward_model.OBJECTIVES
        "bradley_terry", description="bradley_terry (pairs; all pairs of a ranking) | plackett_luce (rankings; a "
        "pair is K=2).")
    margin: float = Field(0.0, ge=0, description="Bradley–Terry margin m in -log σ(r_c - r_r - m) (Llama 2); "
                          "a row's own `margin` column overrides it.")
    steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Pairs or rankings per micro-batch.")
    max_length: int = Field(128, ge=8, description="Lists with a longer prompt+response (tokens) are dropped.")
    finetune: Literal["full", "lora"] = Field("full", description="full | lora (adapters + the score head train).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of distinct prompts held out for "
                                    "evaluation when no held-out set is given.")
    heldout_source: Source = Field(None, description="A separate held-out file or hf:org/name (same schema).")
    min_accuracy: float = Field(0.9, ge=0, le=1, description="Quality gate: held-out pairwise accuracy needed "
                                "to register the reward model.")
    eval_every: int = Field(0, ge=0, description="Evaluate on the held-out set every N steps (0: at the end only).")
    eval_batch_size: int = Field(128, ge=1, description="Sequences per no-grad scoring batch.")
    limit: int | None = Field(None, ge=1, description="Use at most this many rows.")
    source: Source = Field(None, description="Preference data instead of the curated file.")
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _margin_only_for_bt(self) -> "RewardModelConfig":
        if self.margin and self.objective != "bradley_terry":
            raise ValueError(f"margin applies to bradley_terry only, not {self.objective}")
        return self


class PRMConfig(Optimization):
    """A process reward model: Monte-Carlo step labels from the policy, then a per-token score head."""

    sep: str = Field(" ", min_length=1, description="Step separator: ' ' for the arithmetic task, '\\n\\n' for "
                     "real models.")
    label: str = Field("hard", description="hard (1 if any continuation is correct) | soft (fraction correct).")
    verifier: str = Field("exact_int", description="Reward function that decides a correct final answer.")
    solutions_per_prompt: int = Field(4, ge=1, description="Solutions sampled per prompt.")
    rollouts_per_step: int = Field(8, ge=1, description="M: continuations sampled from every step prefix.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    steps: int = Field(40, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Solutions per micro-batch.")
    max_length: int = Field(128, ge=8, description="Longer solutions (prompt + completion tokens) are dropped.")
    loss_agg: LossAggregation = Field("token-mean", description="components.algorithms AGGREGATIONS name over steps.")
    finetune: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of prompts whose solutions are held out.")
    min_step_accuracy: float = Field(0.0, ge=0, le=1, description="Quality gate on held-out step-label accuracy.")
    eval_batch_size: int = Field(128, ge=1)
    limit: int | None = Field(None, ge=1, description="Label at most this many prompts.")
    source: Source = Field(None, description="Prompt/answer data instead of the curated file.")
    system_prompt: str | None = None

    @field_validator("label")
    @classmethod
    def _known_label(cls, v: str) -> str:
        from components.training.prm_labels import get_label_rule

        get_label_rule(v)
        return v


# --------------------------------------------------------------------------- alignment methods (alignment.<method>)


REWARD_MODEL = "reward_model"  # the reward name under which an online method's reward_fn is injected


class LoopConfig(Section):
    """How long a method runs and how often it checkpoints and logs."""

    steps: int = Field(100, ge=1, description="Iterations: optimizer steps (offline) or rollout batches (online).")
    ckpt_every: int = Field(20, ge=1, description="Save a resumable checkpoint every N iterations.")
    log_every: int = Field(1, ge=1, description="Log metrics every N iterations.")


class OptimConfig(LoopConfig):
    """AdamW settings of the Trainer (the policy's parameter group)."""

    lr: float = Field(1e-5, gt=0, description="Learning rate of the policy.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup, in iterations.")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule over iterations.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping, per module (policy, critic).")


class OfflineConfig(OptimConfig):
    """Methods that train on a fixed set of rows (DPO, ORPO, OREO)."""

    batch_size: int = Field(16, ge=1, description="Rows (pairs or trajectories) per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(256, ge=8, description="Prompt + response tokens; longer responses are cut.")
    system_prompt: str | None = Field(None, description="System message rendered before every prompt.")


class SamplingFields(Section):
    """Rollouts and rewards of an online method."""

    prompts_per_step: int = Field(16, ge=1, description="Prompts sampled per iteration.")
    samples_per_prompt: int = Field(4, ge=1, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    rewards: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name=REWARD_MODEL)],
        description=f"Weighted rewards: '{REWARD_MODEL}' (the injected reward_fn) and/or registered rule rewards.")
    reward_timeout_s: float = Field(60.0, gt=0, description="Per reward call; a reward model needs longer than a rule.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout backend.")
    system_prompt: str | None = Field(None, description="System message rendered before every prompt.")


class DPOConfig(OfflineConfig):
    """DPO on preference pairs ``{"prompt", "chosen", "rejected"}``."""

    lr: float = Field(5e-6, gt=0, description="Learning rate of the policy.")
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL to the reference (IPO: its tau).")
    loss_type: DPOLoss = Field("sigmoid", description="components.algorithms DPO_LOSSES name (sigmoid | ipo | hinge).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO: assumed label noise (sigmoid only).")
    nll_weight: float = Field(0.0, ge=0, description="Weight of the chosen replies' per-token NLL added to the loss "
                              "(RPO, Pang et al. 2024; 0 = plain DPO).")
    replay_weight: float = Field(0.0, ge=0, description="Weight of the per-token NLL of replayed reasoning rows "
                                 "(PPO-ptx style; the stage replays the curated worked solutions; 0 = none).")


class ORPOConfig(OfflineConfig):
    """ORPO on preference pairs ``{"prompt", "chosen", "rejected"}``."""

    lr: float = Field(5e-6, gt=0, description="Learning rate of the policy.")
    lam: float = Field(0.1, ge=0, description="Weight of the odds-ratio term against the chosen NLL (paper: 0.1).")


class OREOConfig(OfflineConfig):
    """OREO on trajectories ``{"prompt", "completion", "reward"}``."""

    lr: float = Field(5e-6, gt=0, description="Learning rate of the policy.")
    critic_lr: float = Field(1e-4, gt=0, description="Learning rate of the value model.")
    beta: float = Field(0.1, gt=0, description="KL-regularised MDP's beta in the soft Bellman equation.")
    alpha: float = Field(0.01, ge=0, description="Weight of the KL(pi || pi_ref) regulariser on the policy.")
    mode: Literal["token", "step"] = Field("token", description="Actions: single tokens or reasoning steps.")
    step_sep: str = Field(" ", min_length=1, description="Separator between reasoning steps (mode=step).")
    loss_agg: LossAggregation = Field("seq-mean-token-mean", description="components.algorithms AGGREGATIONS name.")


class PPOConfig(OptimConfig, SamplingFields):
    """PPO with a critic, GAE and a per-token KL penalty to the reference."""

    steps: int = Field(50, ge=1, description="Rollout iterations.")
    ppo_epochs: int = Field(4, ge=1, description="Optimisation passes over each rollout batch.")
    minibatch_size: int = Field(32, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    critic_lr: float = Field(1e-4, gt=0, description="Learning rate of the critic.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="Policy ratio clip range epsilon.")
    value_clip_range: float | None = Field(0.2, gt=0, description="Value clip range around the old values (None: off).")
    kl_coef: float = Field(0.05, ge=0, description="beta of the per-token KL penalty in the reward.")
    kl_estimator: KLEstimator = Field("k1", description="Per-token KL estimator in the reward (k1 | k2 | k3).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch's tokens.")
    loss_agg: LossAggregation = Field("token-mean", description="components.algorithms AGGREGATIONS name.")


class TRPOConfig(LoopConfig, SamplingFields):
    """TRPO: natural-gradient steps inside a KL trust region, group-relative advantages."""

    steps: int = Field(30, ge=1, description="Rollout iterations (one TRPO step each).")
    samples_per_prompt: int = Field(8, ge=2, description="G: completions per prompt (the advantage baseline's group).")
    max_kl: float = Field(0.01, gt=0, description="Trust region delta: KL(pi_old || pi_new) per step, token mean.")
    cg_iters: int = Field(10, ge=1, description="Conjugate-gradient iterations.")
    damping: float = Field(0.1, ge=0, description="Added to the Fisher matrix's diagonal (F + damping I).")
    backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="Line-search shrink factor.")
    max_backtracks: int = Field(10, ge=1, description="Line-search tries before the step is rejected.")
    advantage: AdvantageEstimator = Field("grpo", description="components.algorithms ADVANTAGE_ESTIMATORS name.")
    fisher_fraction: float = Field(0.25, gt=0, le=1, description="Share of the batch's rows (seeded) whose KL "
                                   "gives the Fisher-vector products; the paper uses 10 %. 1 = the whole batch.")


class GRPORMConfig(RLConfig):
    """GRPO (every RLConfig field) whose rewards include the injected reward model."""

    rewards: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name="exact_int", weight=1.0), RewardItem(name="format", weight=0.2),
                                 RewardItem(name=REWARD_MODEL, weight=1.0)],
        description=f"Weighted rewards; must name '{REWARD_MODEL}'. The first one is the correctness reward "
                    "behind the logged accuracy and the pass-rate band.")
    reward_timeout_s: float = Field(60.0, gt=0, description="Per reward call; a reward model needs longer than a rule.")

    @model_validator(mode="after")
    def _names_the_reward_model(self) -> "GRPORMConfig":
        if REWARD_MODEL not in {r.name for r in self.rewards}:
            raise ValueError(f"rewards must name '{REWARD_MODEL}' (the injected reward model)")
        return self


# --------------------------------------------------------------------------- distillation


class DistillConfig(Optimization):
    """Distillation (seed §2.3 step 5; R1 §2.4): teacher samples, then SFT and/or token-level KD."""

    samples: RejectionConfig = Field(
        default_factory=lambda: RejectionConfig(samples_per_prompt=4, keep_per_prompt=2, limit=2000),
        description="How the teacher's training sequences are drawn and verified (K per prompt, keep k, "
        "verifier, format, lengths, prompt limit, sampling temperature, rollout backend).")
    sft_weight: float = Field(1.0, ge=0, description="Weight of the student's NLL on the teacher's verified "
                              "generations (sequence-level distillation).")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the token-level divergence to the teacher's logits.")
    divergence: DistillLoss = Field("forward-kl", description="components.algorithms DISTILL_LOSSES name: "
                            "forward-kl | reverse-kl | jsd.")
    beta: float = Field(0.5, gt=0, lt=1, description="JSD mixing weight of the teacher (jsd only).")
    kd_temperature: float = Field(1.0, gt=0, description="Both models' logits are divided by this before the "
                                  "divergence (no T^2 rescaling).")
    loss_agg: LossAggregation = Field("token-mean", description="components.algorithms AGGREGATIONS name.")
    steps: int = Field(500, ge=1, description="Optimizer steps.")
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    max_length: int = Field(128, ge=8, description="Training sequences (prompt + response) are cut to this.")
    pack: bool = Field(True, description="Pack each micro-batch's sequences into rows of max_length tokens (the same "
                       "loss, no padding) when loss_agg is token-mean; other aggregations train on padded rows.")
    ckpt_every: int = Field(100, ge=1, description="Save a resumable checkpoint every N steps.")

    @model_validator(mode="after")
    def _some_signal(self) -> "DistillConfig":
        if self.sft_weight == 0 and self.kd_weight == 0:
            raise ValueError("sft_weight and kd_weight are both 0: the student would learn nothing")
        return self
