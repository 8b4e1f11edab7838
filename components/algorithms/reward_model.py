"""Reward-model objectives (pairwise, listwise, process/step-level) and their metrics.

- Bradley-Terry pairwise loss: Bradley & Terry (1952); as used for RLHF reward
  models by Ouyang et al. 2022 (InstructGPT, Eq. 1); the optional margin follows
  Touvron et al. 2023 (Llama 2, Sec. 3.2.2, Eq. 2).
- Bradley-Terry on a K-way ranking: the mean BT loss over its K(K-1)/2 ordered pairs,
  one list per batch element (Ouyang et al. 2022, InstructGPT, Sec. 3.5, Eq. 1).
- Plackett-Luce listwise loss: Plackett (1975), Luce (1959); the K-way ranking
  likelihood of Zhu et al. 2023 ("Principled RLHF from pairwise or K-wise
  comparisons", Sec. 4). For K = 2 it is exactly Bradley-Terry.
- Process reward model loss: per-step binary cross-entropy (Lightman et al.
  2023, "Let's Verify Step by Step"; Wang et al. 2024, Math-Shepherd, Eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.masked import fill_padding, last_valid_index
from components.algorithms.validate import check_float, check_mask, check_same_shape, check_tensor


def _check_pair(chosen: Tensor, rejected: Tensor) -> None:
    check_tensor("chosen_rewards", chosen, 1, "[B]")
    check_same_shape("chosen_rewards", chosen, "rejected_rewards", rejected)
    check_float("chosen_rewards", chosen)


def _listwise_mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    check_tensor("scores", scores, 2, "[B, K]")
    check_float("scores", scores)
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    return check_mask("mask", mask, "scores", scores)


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None
) -> Tensor:
    """Per-pair Bradley-Terry negative log-likelihood.

    Shapes: chosen_rewards, rejected_rewards [B], margin [B] or None -> [B].
    Formula: l = -log sigmoid(r_c - r_r - margin).
    """
    _check_pair(chosen_rewards, rejected_rewards)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        check_same_shape("chosen_rewards", chosen_rewards, "margin", margin)
        diff = diff - margin
    return -F.logsigmoid(diff)


def bradley_terry_ranking_loss(scores: Tensor, mask: Tensor | None = None, margin: Tensor | None = None) -> Tensor:
    """Per-list mean Bradley-Terry loss over every ordered pair of a ranking (InstructGPT).

    Shapes: scores [B, K] ordered best -> worst, mask [B, K] (False for missing items of
    ragged lists), margin [B] or None (applied to every pair of its list) -> [B]. Lists with
    < 2 valid items have loss 0. For K = 2 it is exactly ``bradley_terry_loss``.
    Formula: l_b = 1 / C(K_b, 2) * sum_{i < j valid} -log sigmoid(s_i - s_j - margin_b).
    """
    mask = _listwise_mask(scores, mask)
    if margin is not None:
        check_tensor("margin", margin, 1, "[B]")
        if margin.shape[0] != scores.shape[0]:
            raise ValueError(f"margin: expected {scores.shape[0]} values like scores, got {margin.shape[0]}")
    k = scores.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    b, i, j = (mask.unsqueeze(2) & mask.unsqueeze(1) & upper).nonzero(as_tuple=True)
    pair_loss = bradley_terry_loss(scores[b, i], scores[b, j], None if margin is None else margin[b])
    total = scores.new_zeros(scores.shape[0]).index_add(0, b, pair_loss)
    count = scores.new_zeros(scores.shape[0]).index_add(0, b, torch.ones_like(pair_loss))
    return total / count.clamp_min(1.0)


def plackett_luce_loss(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-list Plackett-Luce negative log-likelihood of the given ranking.

    Shapes: scores [B, K] ordered best -> worst along K, mask [B, K] (False for
    missing items of ragged lists; the order of the valid items is their order
    along K) -> [B]. Lists with < 2 valid items have loss 0.
    Formula: l = sum_{k valid} [ log sum_{j >= k, j valid} exp(s_j) - s_k ],
    the tail log-sum-exp computed with a reversed logcumsumexp.
    """
    mask = _listwise_mask(scores, mask)
    # masked items get the most negative finite value: exp() of it is exactly 0
    # and, unlike -inf, it keeps logcumsumexp's backward free of NaN.
    very_negative = torch.finfo(scores.dtype).min
    s = torch.where(mask, scores, very_negative)
    tail_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return fill_padding(tail_lse - s, mask).sum(dim=-1)


def process_reward_loss(
    step_logits: Tensor,
    step_labels: Tensor,
    step_mask: Tensor,
    loss_agg: str = "token-mean",
) -> Tensor:
    """Binary cross-entropy of per-step correctness predictions (a PRM).

    Shapes: step_logits [B, S] (logit that step s is correct), step_labels [B, S]
    in [0, 1] (hard or soft), step_mask [B, S] True on labelled steps -> scalar.
    Formula: l_bs = -[y log sigmoid(z) + (1 - y) log sigmoid(-z)], then
    aggregate_loss(l, step_mask, loss_agg). An outcome reward model is the
    special case produced by ``outcome_only_labels``.
    """
    check_tensor("step_logits", step_logits, 2, "[B, S]")
    check_float("step_logits", step_logits)
    check_same_shape("step_logits", step_logits, "step_labels", step_labels)
    step_mask = check_mask("step_mask", step_mask, "step_logits", step_logits)
    z = fill_padding(step_logits, step_mask)
    y = fill_padding(step_labels.to(step_logits.dtype), step_mask)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    return aggregate_loss(bce, step_mask, loss_agg)


def outcome_only_labels(outcome: Tensor, step_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Place an outcome label on the last valid step only (outcome reward model).

    Shapes: outcome [B] in [0, 1], step_mask [B, S] -> (labels [B, S] float,
    label_mask [B, S] bool); rows without valid steps get an all-False label_mask.
    """
    check_tensor("outcome", outcome, 1, "[B]")
    check_tensor("step_mask", step_mask, 2, "[B, S]")
    if step_mask.shape[0] != outcome.shape[0]:
        raise ValueError(f"step_mask: expected {outcome.shape[0]} rows like outcome, got {step_mask.shape[0]}")
    last = last_valid_index(check_mask("step_mask", step_mask, "step_mask", step_mask))
    positions = torch.arange(step_mask.shape[1], device=step_mask.device)
    label_mask = positions.unsqueeze(0) == last.unsqueeze(1)
    dtype = outcome.dtype if outcome.is_floating_point() else torch.float32
    labels = torch.where(label_mask, outcome.to(dtype).unsqueeze(1), 0.0)
    return labels, label_mask


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs with r_c > r_r; ties count 1/2 (chance level of a constant RM).

    Shapes: [B], [B] -> scalar.
    """
    _check_pair(chosen_rewards, rejected_rewards)
    # float64: a share is compared with thresholds such as 0.9, which 180/200 in float32 falls short of
    wins = (chosen_rewards > rejected_rewards).double() + 0.5 * (chosen_rewards == rejected_rewards).double()
    return wins.mean()


def _ordered_pairs(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """diff[b, i, j] = s_i - s_j and a mask of valid pairs with i ranked above j (i < j)."""
    k = scores.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1) & upper
    return scores.unsqueeze(2) - scores.unsqueeze(1), pair_mask


def ranking_accuracy(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of correctly ordered pairs, pooled over all lists (ties count 1/2).

    Shapes: scores [B, K] ordered best -> worst, mask [B, K] -> scalar.
    Formula: sum over valid pairs i < j of [s_i > s_j] + 1/2 [s_i = s_j], / #pairs.
    With K = 2 this equals ``pairwise_accuracy``.
    """
    mask = _listwise_mask(scores, mask)
    diff, pair_mask = _ordered_pairs(scores, mask)
    if not bool(pair_mask.any()):
        raise ValueError("mask: no list has two valid items to compare")
    credit = (diff > 0).double() + 0.5 * (diff == 0).double()  # float64, as in pairwise_accuracy
    return credit[pair_mask].mean()


def kendall_tau(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Kendall tau-a between the given ranking and the one induced by scores.

    Shapes: scores [B, K] ordered best -> worst, mask [B, K] -> scalar, averaged
    over lists with >= 2 valid items.
    Formula per list: tau = sum_{i<j valid} sign(s_i - s_j) / #pairs (ties count 0).
    """
    mask = _listwise_mask(scores, mask)
    diff, pair_mask = _ordered_pairs(scores, mask)
    n_pairs = pair_mask.sum(dim=(1, 2))
    if not bool((n_pairs > 0).any()):
        raise ValueError("mask: no list has two valid items to compare")
    signs = torch.where(pair_mask, torch.sign(diff), 0.0).sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    return (signs[has_pairs] / n_pairs[has_pairs]).mean()
