"""Per-token estimators of KL(pi || pi_ref) from sampled-token log-probs.

For a token a ~ pi with logp = log pi(a|s) and ref_logp = log pi_ref(a|s),
each estimator k(a) satisfies (or approximates) E_{a~pi}[k(a)] = KL(pi || pi_ref).
Reference: J. Schulman, "Approximating KL Divergence" (blog note, 2020):
k1 is unbiased but can be negative, k2 is biased but low-variance, k3 is
unbiased, always >= 0 and low-variance (used by GRPO, Shao et al. 2024, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from components.algorithms.validate import check_float, check_same_shape, lookup


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    # k1 = log pi(a) - log pi_ref(a)
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    # k2 = 1/2 (log pi(a) - log pi_ref(a))^2
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    # k3 = exp(r) - r - 1 with r = log pi_ref(a) - log pi(a);  expm1(r) - r is the stable form
    r = ref_logp - logp
    return torch.expm1(r) - r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def get_kl_estimator(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Return the KL estimator registered as ``name`` (see ``KL_ESTIMATORS``)."""
    return lookup(KL_ESTIMATORS, "KL estimator", name)


def check_kl_in_loss(name: str, beta: float) -> None:
    """Refuse k1 as a differentiated loss term: with the sampled tokens held fixed its expected
    gradient is E_pi[grad log pi] = 0, so a KL penalty built from it does nothing (k1 stays fine
    as a reward-shaping term, e.g. ``kl_penalty_rewards``, where no gradient flows through it)."""
    if beta > 0 and name == "k1":
        raise ValueError("kl_estimator: 'k1' in the loss has zero expected gradient (E_pi[grad log pi] = 0); "
                         "use 'k2' (gradient of KL(pi || pi_ref)) or 'k3' (GRPO's; gradient of KL(pi_ref || pi))")


def token_kl(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate.

    Shapes: logp, ref_logp [...] (same shape, typically [B, T]) -> [...].
    No masking here: aggregate the result with ``aggregate_loss``/``masked_mean``.
    """
    fn = get_kl_estimator(estimator)
    check_same_shape("logp", logp, "ref_logp", ref_logp)
    check_float("logp", logp)
    check_float("ref_logp", ref_logp)
    return fn(logp, ref_logp)
