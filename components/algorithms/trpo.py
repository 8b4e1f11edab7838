"""Natural-gradient (TRPO) step for a flat parameter vector.

Schulman et al. 2015, "Trust Region Policy Optimization": maximise the
surrogate L(theta) subject to KL(pi_old || pi_theta) <= delta (Eq. 14), solved
approximately as in Appendix C: conjugate gradient on F x = g with
Fisher-vector products from the Hessian of the KL (C.1), step scaled to
sqrt(2 delta / x^T F x), then a backtracking line search that accepts only if
the surrogate improves and the KL constraint holds.

The step is invariant to multiplying the surrogate by a positive constant c (g -> c g,
x -> c x, and the scaling sqrt(2 delta / x^T F x) undoes c): conjugate gradient therefore
stops on a residual RELATIVE to |g|^2, never on an absolute one, which would stop a solve
for a small gradient before its first iteration and reject the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from components.algorithms.validate import check_float, check_int, check_scalar, check_tensor


@dataclass(frozen=True)
class TRPOStepInfo:
    accepted: bool  # a candidate passed the line search (else params are unchanged)
    kl: float  # KL of the returned params (0.0 if not accepted)
    improvement: float  # surrogate(new) - surrogate(old) (0.0 if not accepted)
    n_backtracks: int  # shrinks applied before acceptance (max_backtracks if none accepted)


def conjugate_gradient(
    fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, rtol: float = 1e-10
) -> Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given only v -> A v.

    Shapes: b [N] -> x [N]. Stops after ``iters`` iterations, when the squared
    residual drops to ``rtol`` times the squared norm of b (|r|^2 <= rtol |b|^2: a
    relative test, so CG(A, c b) = c CG(A, b) for every c > 0), or when a direction
    has non-positive curvature. b = 0 gives x = 0.
    Formula (Hestenes & Stiefel 1952): alpha = r.r / p.Ap; x += alpha p;
    r -= alpha Ap; p = r + (r_new.r_new / r.r) p.
    """
    check_tensor("b", b, 1, "[N]")
    iters = check_int("iters", iters, low=0)
    rtol = check_scalar("rtol", rtol, low=0.0, high=1.0, high_open=True)
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    stop = rtol * rr
    for _ in range(iters):
        if rr <= stop or rr == 0:
            break
        ap = fvp(p)
        curvature = p @ ap
        if curvature <= 0:
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(
    kl_fn: Callable[[Tensor], Tensor], params: Tensor, damping: float = 0.1
) -> Callable[[Tensor], Tensor]:
    """Return v -> (H + damping I) v, H the Hessian of kl_fn at params (= Fisher at pi_old).

    Double backward: g = d KL / d theta (graph kept), H v = d (g . v) / d theta.
    ``kl_fn(theta)`` must return KL(pi_old || pi_theta) with pi_old held fixed.
    """
    damping = check_scalar("damping", damping, low=0.0)
    theta = params.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad_kl,) = torch.autograd.grad(kl_fn(theta), theta, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(grad_kl @ v, theta, retain_graph=True)
        return hv.detach() + damping * v

    return fvp


def trpo_step(
    params: Tensor,
    surrogate_fn: Callable[[Tensor], Tensor],
    kl_fn: Callable[[Tensor], Tensor],
    max_kl: float = 0.01,
    cg_iters: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
    damping: float = 0.1,
    fisher_kl_fn: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, TRPOStepInfo]:
    """One TRPO update of a flat parameter vector (surrogate is MAXIMISED).

    Shapes: params [N] float -> (new_params [N] detached, TRPOStepInfo).
    Steps: g = grad L(theta); x = CG(F, g); step = sqrt(2 delta / x^T F x) * x;
    try theta + backtrack_ratio^k * step for k = 0..max_backtracks-1, accept the
    first with L(new) - L(old) > 0 and KL(new) <= delta.
    ``fisher_kl_fn`` (default ``kl_fn``) is the KL whose Hessian gives F, e.g. the KL on a
    subsample of the batch (Schulman et al. 2015, App. C.1: Fisher-vector products on 10 %
    of the data); the line search always checks ``kl_fn``.
    """
    check_tensor("params", params, 1, "[N]")
    check_float("params", params)
    max_kl = check_scalar("max_kl", max_kl, low=0.0, low_open=True)
    cg_iters = check_int("cg_iters", cg_iters, low=1)
    max_backtracks = check_int("max_backtracks", max_backtracks, low=1)
    backtrack_ratio = check_scalar("backtrack_ratio", backtrack_ratio, low=0.0, high=1.0, low_open=True, high_open=True)
    theta = params.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        surrogate_old = surrogate_fn(theta)
        (g,) = torch.autograd.grad(surrogate_old, theta)
    fvp = fisher_vector_product(kl_fn if fisher_kl_fn is None else fisher_kl_fn, params, damping)
    x = conjugate_gradient(fvp, g, cg_iters)
    shs = x @ fvp(x)
    rejected = TRPOStepInfo(False, 0.0, 0.0, max_backtracks)
    if not bool(shs > 0) or not bool(torch.isfinite(shs)):
        return params.detach().clone(), rejected
    full_step = math.sqrt(2.0 * max_kl / shs.item()) * x
    with torch.no_grad():
        for k in range(max_backtracks):
            candidate = params.detach() + backtrack_ratio**k * full_step
            improvement = (surrogate_fn(candidate) - surrogate_old).item()
            kl = kl_fn(candidate).item()
            if improvement > 0 and kl <= max_kl:
                return candidate, TRPOStepInfo(True, kl, improvement, k)
    return params.detach().clone(), rejected
