"""Masked reductions and whitening over padded ``[B, T]`` token tensors.

Convention for the whole package: ``mask[b, t]`` is True where token ``t`` of
sequence ``b`` counts (e.g. response tokens) and False for prompt/padding.
Reductions use ``torch.where`` (never ``x * mask``), so junk values in padded
positions, even inf or NaN, cannot leak into results or gradients.
An empty selection reduces to 0 (sum) or 0 (mean), never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms.validate import check_mask, check_scalar, check_tensor


def fill_padding(x: Tensor, mask: Tensor, value: float = 0.0) -> Tensor:
    """Return ``x`` with positions where ``mask`` is False replaced by ``value``.

    Shapes: x and mask are the same shape; result likewise. Gradients to the
    replaced positions are exactly zero.
    """
    mask = check_mask("mask", mask, "x", x)
    return torch.where(mask, x, torch.as_tensor(value, dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is True.

    Shapes: x, mask [...]; dim=None -> scalar, dim=d -> [...] with d removed
    (e.g. dim=-1 on [B, T] gives per-sequence sums [B]).
    Formula: sum_t m_t * x_t.
    """
    x = fill_padding(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of True positions (as float), overall or along ``dim``."""
    check_tensor("mask", mask)
    m = mask.bool().float()
    return m.sum() if dim is None else m.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is True (0 where nothing is selected).

    Shapes: as ``masked_sum``; dim=None is the global token mean, dim=-1 the
    per-sequence mean [B].
    Formula: sum_t m_t x_t / max(sum_t m_t, 1).
    """
    total = masked_sum(x, mask, dim)
    return total / masked_count(mask, dim).clamp(min=1.0).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Global variance of the selected entries of ``x`` (scalar).

    Formula: sum_t m_t (x_t - mean)^2 / (n - 1 if unbiased else n), n = sum_t m_t.
    Returns 0 when fewer than 2 (unbiased) or 1 entries are selected.
    """
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    n = masked_count(mask) - (1.0 if unbiased else 0.0)
    return sq / n.clamp(min=1.0).to(sq.dtype)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the selected entries of ``x`` to unit variance (and zero mean).

    Shapes: x, mask [B, T] (any shape works); result same shape, 0 at padding.
    Formula: y = (x - mean) / sqrt(var + eps), var the (biased) masked variance;
    with shift_mean=False the mean is added back: y = (x - mean)/sqrt(var+eps) + mean.
    Used to whiten PPO advantages (Schulman et al. 2017, PPO, Sec. 5 practice;
    Ziegler et al. 2019 use the same normalisation of advantages).
    """
    check_scalar("eps", eps, low=0.0)
    mask = check_mask("mask", mask, "x", x)
    mean = masked_mean(x, mask)
    y = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        y = y + mean
    return fill_padding(y, mask)


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last True position of each row of ``mask[B, T]`` -> long [B] (-1 if none)."""
    check_tensor("mask", mask, 2, "[B, T]")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=-1).values
