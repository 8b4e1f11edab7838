"""Turn a per-token loss ``[B, T]`` into the scalar that is back-propagated.

This is the single place where token/sequence normalisation lives; every
policy loss in the package takes ``loss_agg`` and calls ``aggregate_loss``.
How tokens are weighted matters: DAPO (Yu et al. 2025, Sec. 3.3,
"token-level policy gradient loss") argues for ``token-mean``; the original
GRPO (Shao et al. 2024, Eq. 3) averages per sequence (``seq-mean-token-mean``);
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", Sec. 3.1)
removes the length bias by dividing token sums by a constant
(``seq-mean-token-sum-norm``).

Rows whose mask is all False are treated as absent: they contribute nothing
and are not counted as sequences, so appending fully padded rows never changes
the loss. With nothing selected at all, every mode returns 0.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from components.algorithms.masked import masked_count, masked_sum
from components.algorithms.validate import check_float, check_mask, check_scalar, check_tensor, lookup


def _n_sequences(mask: Tensor) -> Tensor:
    return (masked_count(mask, dim=-1) > 0).sum().clamp(min=1)


def token_mean(loss: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    # L = sum_{b,t} m_bt l_bt / sum_{b,t} m_bt
    return masked_sum(loss, mask) / masked_count(mask).clamp(min=1.0).to(loss.dtype)


def seq_mean_token_mean(loss: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    # L = 1/N sum_b [ sum_t m_bt l_bt / sum_t m_bt ],  N = #rows with a valid token
    per_seq = masked_sum(loss, mask, dim=-1) / masked_count(mask, dim=-1).clamp(min=1.0).to(loss.dtype)
    return per_seq.sum() / _n_sequences(mask)


def seq_mean_token_sum(loss: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    # L = 1/N sum_b sum_t m_bt l_bt
    return masked_sum(loss, mask) / _n_sequences(mask)


def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    # L = 1/N sum_b sum_t m_bt l_bt / C,  C = norm_constant (default T = mask.shape[-1])
    c = float(mask.shape[-1]) if norm_constant is None else norm_constant
    return masked_sum(loss, mask) / _n_sequences(mask) / c


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float | None], Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def get_aggregation(name: str) -> Callable[[Tensor, Tensor, float | None], Tensor]:
    """Return the aggregation function registered as ``name`` (see ``AGGREGATIONS``)."""
    return lookup(AGGREGATIONS, "loss aggregation", name)


def aggregate_loss(
    loss: Tensor, mask: Tensor, mode: str = "token-mean", norm_constant: float | None = None
) -> Tensor:
    """Reduce a per-token loss to a scalar according to ``mode``.

    Shapes: loss [B, T] float, mask [B, T] bool or 0/1 -> scalar.
    Modes (formulas in the functions above): ``token-mean``,
    ``seq-mean-token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``
    (Dr. GRPO; ``norm_constant`` defaults to T, e.g. pass the max generation length).
    """
    fn = get_aggregation(mode)
    check_tensor("loss", loss, 2, "[B, T]")
    check_float("loss", loss)
    mask = check_mask("mask", mask, "loss", loss)
    if norm_constant is not None:
        norm_constant = check_scalar("norm_constant", norm_constant, low=0.0, low_open=True)
    return fn(loss, mask, norm_constant)
