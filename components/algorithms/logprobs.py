"""Per-token log-probabilities, sequence log-probabilities and entropy from logits.

Alignment convention: ``token_logprobs(logits, labels)`` assumes ``logits[:, t]``
is the distribution that predicts ``labels[:, t]``; it does NOT shift. For a
causal LM run on ``input_ids``, call ``shift_for_causal_lm`` first (position t
predicts token t+1). Half-precision logits are upcast to float32 internally.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms.masked import masked_mean, masked_sum
from components.algorithms.validate import (
    check_choice,
    check_float,
    check_mask,
    check_tensor,
)

IGNORE_INDEX = -100


def _upcast(logits: Tensor) -> Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def shift_for_causal_lm(
    logits: Tensor, input_ids: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Align causal-LM outputs with the tokens they predict.

    Shapes: logits [B, T, V], input_ids [B, T], mask [B, T] (True on the tokens
    that should be scored, e.g. the response) -> (logits [B, T-1, V],
    labels [B, T-1], mask [B, T-1] bool). Position t of the result holds the
    prediction made at t for token t+1, and its mask is that of token t+1.
    """
    check_tensor("logits", logits, 3, "[B, T, V]")
    check_tensor("input_ids", input_ids, 2, "[B, T]")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"input_ids: expected shape {tuple(logits.shape[:2])} like logits[:, :, 0], "
            f"got {tuple(input_ids.shape)}"
        )
    mask = check_mask("mask", mask, "input_ids", input_ids)
    return logits[:, :-1], input_ids[:, 1:], mask[:, 1:]


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """log p(labels[b, t]) under softmax(logits[b, t]); labels already aligned (no shift).

    Shapes: logits [B, T, V] float, labels [B, T] long -> [B, T] (float32 for
    16-bit logits). Positions whose label equals ``ignore_index`` get 0.0.
    Formula: logp_t = logits_t[y_t] - logsumexp_v logits_t[v].
    """
    check_tensor("logits", logits, 3, "[B, T, V]")
    check_float("logits", logits)
    check_tensor("labels", labels, 2, "[B, T]")
    if labels.shape != logits.shape[:2] or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels: expected integer tensor of shape {tuple(logits.shape[:2])}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    keep = labels != ignore_index
    safe = torch.where(keep, labels, 0)
    if bool(((safe < 0) | (safe >= logits.shape[-1])).any()):
        raise ValueError(f"labels: values must be in [0, {logits.shape[-1]}) or {ignore_index}")
    logits = _upcast(logits)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(keep, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def sequence_logprob(logp: Tensor, mask: Tensor, reduce: str = "sum") -> Tensor:
    """Log-probability of each sequence from its token log-probs.

    Shapes: logp [B, T], mask [B, T] -> [B].
    Formula: sum -> sum_t m_t logp_t (log pi(y|x), DPO); mean -> that sum / sum_t m_t
    (length-normalised, as used by ORPO / IPO / SimPO).
    """
    check_choice("reduce", reduce, ("sum", "mean"))
    check_tensor("logp", logp, 2, "[B, T]")
    mask = check_mask("mask", mask, "logp", logp)
    return masked_sum(logp, mask, dim=-1) if reduce == "sum" else masked_mean(logp, mask, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim.

    Shapes: logits [..., V] -> [...].
    Formula: H = -sum_v p_v log p_v, p = softmax(z); entries with z_v = -inf
    (masked vocabulary) contribute 0.
    """
    check_tensor("logits", logits)
    check_float("logits", logits)
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(dim=-1)
