"""Supervised fine-tuning objective: masked next-token negative log-likelihood."""

from __future__ import annotations

from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.logprobs import token_logprobs
from components.algorithms.validate import check_mask


def sft_loss(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    loss_agg: str = "token-mean",
    norm_constant: float | None = None,
) -> Tensor:
    """Masked NLL of ``labels`` under ``logits`` (maximum likelihood, e.g. the
    cold-start SFT stage of DeepSeek-R1, Guo et al. 2025, Sec. 2.3.1).

    Shapes: logits [B, T, V], labels [B, T] already aligned (use
    ``shift_for_causal_lm`` on raw model outputs), mask [B, T] True on tokens
    to learn (prompt and padding False) -> scalar.
    Formula: l_bt = -log softmax(logits_bt)[labels_bt]; loss = aggregate_loss(l, mask, loss_agg).
    """
    nll = -token_logprobs(logits, labels)
    mask = check_mask("mask", mask, "labels", labels)
    return aggregate_loss(nll, mask, loss_agg, norm_constant)
