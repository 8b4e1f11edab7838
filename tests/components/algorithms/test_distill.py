"""Token-level distillation: forward KL, reverse KL, generalised JSD."""

import math

import pytest
import torch

from components.algorithms.distill import DISTILL_LOSSES, distill_loss

D = torch.float64
ONE = torch.ones(1, 1)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_by_hand():
    """Student logits [0, 0] -> S = (1/2, 1/2); teacher [log 3, 0] -> P = (3/4, 1/4).
    forward = KL(P || S), reverse = KL(S || P), jsd(0.5) = (KL(P || M) + KL(S || M)) / 2 with
    M = (5/8, 3/8); jsd(0.25) uses M = 0.25 P + 0.75 S."""
    s = torch.tensor([[[0.0, 0.0]]], dtype=D)
    t = torch.tensor([[[math.log(3.0), 0.0]]], dtype=D)
    P, S = (0.75, 0.25), (0.5, 0.5)
    torch.testing.assert_close(distill_loss(s, t, ONE, "forward-kl"), torch.tensor(kl(P, S), dtype=D))
    torch.testing.assert_close(distill_loss(s, t, ONE, "reverse-kl"), torch.tensor(kl(S, P), dtype=D))
    for beta in (0.5, 0.25):
        M = tuple(beta * p + (1 - beta) * q for p, q in zip(P, S))
        expected = beta * kl(P, M) + (1 - beta) * kl(S, M)
        torch.testing.assert_close(distill_loss(s, t, ONE, "jsd", beta=beta), torch.tensor(expected, dtype=D))
    # temperature 2 on teacher logits [2 log 3, 0] gives the same P
    t2 = torch.tensor([[[2 * math.log(3.0), 0.0]]], dtype=D)
    out = distill_loss(2 * s, t2, ONE, "forward-kl", temperature=2.0)
    torch.testing.assert_close(out, torch.tensor(kl(P, S), dtype=D))


@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES))
def test_zero_iff_teacher_equals_student(name):
    torch.manual_seed(0)
    z = torch.randn(2, 3, 6, dtype=D)
    mask = torch.ones(2, 3)
    torch.testing.assert_close(distill_loss(z, z.clone(), mask, name), torch.tensor(0.0, dtype=D))
    # shifting logits by a constant leaves the distribution unchanged
    torch.testing.assert_close(distill_loss(z, z + 3.0, mask, name), torch.tensor(0.0, dtype=D))
    assert distill_loss(z, torch.randn(2, 3, 6, dtype=D), mask, name) > 0


@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES))
def test_gradcheck_masking_and_teacher_detached(name):
    torch.manual_seed(1)
    s = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    t = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a: distill_loss(a, t, mask, name, beta=0.3, temperature=1.5), (s,))
    junk_s = torch.where(mask[..., None], s.detach(), 1e3 * torch.randn(2, 3, 4, dtype=D)).requires_grad_(True)
    junk_t = torch.where(mask[..., None], t.detach(), -1e3 * torch.randn(2, 3, 4, dtype=D))
    out = distill_loss(junk_s, junk_t, mask, name)
    torch.testing.assert_close(out, distill_loss(s.detach(), t.detach(), mask, name))
    distill_loss(s, t, mask, name).backward()
    assert t.grad is None
    out.backward()
    assert (junk_s.grad[~mask] == 0).all()


def test_errors():
    z = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="teacher_logits"):
        distill_loss(z, torch.zeros(2, 3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        distill_loss(z, z, torch.ones(2, 4))
    with pytest.raises(ValueError, match="beta"):
        distill_loss(z, z, torch.ones(2, 3), "jsd", beta=1.0)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(z, z, torch.ones(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="valid names: forward-kl, jsd, reverse-kl"):
        distill_loss(z, z, torch.ones(2, 3), "tvd")
