"""Token-level knowledge-distillation divergences between teacher and student.

- forward KL(teacher || student): classic KD (Hinton et al. 2015), mode-covering.
- reverse KL(student || teacher): mode-seeking (Gu et al. 2024, MiniLLM, Sec. 2.1).
- generalised JSD with mixing beta: Agarwal et al. 2024 (GKD, "On-Policy
  Distillation of Language Models", Sec. 3, Eq. for D_JSD(beta)):
      JSD_beta(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q,
  with P = teacher, Q = student; beta = 0.5 is the symmetric Jensen-Shannon divergence.
Logits are divided by ``temperature`` before the softmax (no T^2 rescaling).
The teacher is always detached: gradients only reach the student.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.validate import check_float, check_mask, check_scalar, check_tensor, lookup


def _kl(logp_a: Tensor, logp_b: Tensor) -> Tensor:
    # KL(A || B) = sum_v p_a(v) (log p_a(v) - log p_b(v)); entries with p_a(v) = 0 contribute 0
    diff = torch.where(torch.isneginf(logp_a), 0.0, logp_a - logp_b)
    return (logp_a.exp() * diff).sum(dim=-1)


def forward_kl(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    # KL(teacher || student); beta unused
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    # KL(student || teacher); beta unused
    return _kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    # log M = logsumexp(log beta + log P, log(1 - beta) + log Q)
    # JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M)
    log_m = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
    return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)


DISTILL_LOSSES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "forward-kl": forward_kl,
    "reverse-kl": reverse_kl,
    "jsd": generalized_jsd,
}


def get_distill_loss(name: str) -> Callable[[Tensor, Tensor, float], Tensor]:
    """Return divergence ``name``: fn(student_logp [..., V], teacher_logp [..., V], beta) -> [...]."""
    return lookup(DISTILL_LOSSES, "distillation loss", name)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    loss_type: str = "forward-kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    loss_agg: str = "token-mean",
) -> Tensor:
    """Masked token-level distillation loss.

    Shapes: student_logits, teacher_logits [B, T, V] (aligned positions), mask [B, T] -> scalar.
    Formula: l_bt = D(softmax(z^s_bt / tau), softmax(z^t_bt / tau)) with D from
    ``DISTILL_LOSSES``; loss = aggregate_loss(l, mask, loss_agg). It is 0 iff
    teacher and student distributions agree on every unmasked token.
    ``beta`` in (0, 1) is only used by ``jsd``.
    """
    fn = get_distill_loss(loss_type)
    beta = check_scalar("beta", beta, low=0.0, high=1.0, low_open=True, high_open=True)
    temperature = check_scalar("temperature", temperature, low=0.0, low_open=True)
    check_tensor("student_logits", student_logits, 3, "[B, T, V]")
    check_float("student_logits", student_logits)
    check_tensor("teacher_logits", teacher_logits, 3, "[B, T, V]")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected shape {tuple(student_logits.shape)} like student_logits "
            f"(same vocabulary), got {tuple(teacher_logits.shape)}"
        )
    mask = check_mask("mask", mask, "student_logits[..., 0]", student_logits[..., 0])
    keep = mask.unsqueeze(-1)
    dtype = torch.float32 if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits.dtype
    student = torch.where(keep, student_logits, 0.0).to(dtype) / temperature
    teacher = torch.where(keep, teacher_logits.detach(), 0.0).to(dtype) / temperature
    per_token = fn(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), beta)
    return aggregate_loss(per_token, mask, loss_agg)
