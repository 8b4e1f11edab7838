"""Token log-probs, causal shifting, sequence log-probs and entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from components.algorithms.logprobs import (
    entropy_from_logits,
    sequence_logprob,
    shift_for_causal_lm,
    token_logprobs,
)

D = torch.float64


def test_token_logprobs_by_hand():
    """logits [log 3, 0] -> p = [3/4, 1/4]; logits [0, 0] -> p = [1/2, 1/2]; label -100 -> 0."""
    logits = torch.tensor([[[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, 0.0], [5.0, 1.0]]], dtype=D)
    labels = torch.tensor([[0, 1, 1, -100]])
    expected = torch.tensor([[math.log(0.75), math.log(0.25), math.log(0.5), 0.0]], dtype=D)
    torch.testing.assert_close(token_logprobs(logits, labels), expected)


def test_token_logprobs_matches_cross_entropy_and_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=D, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    ce = F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), reduction="none").view(2, 3)
    torch.testing.assert_close(token_logprobs(logits, labels), -ce)
    assert torch.autograd.gradcheck(lambda z: token_logprobs(z, labels), (logits,))


def test_half_precision_is_upcast():
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.zeros(1, 2, dtype=torch.long))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((1, 2), -math.log(4.0)))


def test_shift_for_causal_lm():
    """Position t of the shifted output predicts input token t+1 with that token's mask."""
    logits = torch.arange(2 * 4 * 3, dtype=D).view(2, 4, 3)
    ids = torch.tensor([[1, 2, 0, 1], [2, 2, 1, 0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    sl, labels, m = shift_for_causal_lm(logits, ids, mask)
    torch.testing.assert_close(sl, logits[:, :3])
    torch.testing.assert_close(labels, torch.tensor([[2, 0, 1], [2, 1, 0]]))
    torch.testing.assert_close(m, torch.tensor([[True, True, False], [False, True, True]]))


def test_sequence_logprob_by_hand():
    """Row 0 keeps -1, -2 -> sum -3, mean -1.5; row 1 keeps -4 -> sum = mean = -4."""
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-4.0, -9.0, -9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(sequence_logprob(logp, mask), torch.tensor([-3.0, -4.0], dtype=D))
    torch.testing.assert_close(sequence_logprob(logp, mask, "mean"), torch.tensor([-1.5, -4.0], dtype=D))


def test_entropy_by_hand():
    """Uniform over 4 -> log 4; [3/4, 1/4] -> -(3/4 log 3/4 + 1/4 log 1/4); a -inf entry contributes 0."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]], dtype=D)
    expected = torch.tensor([math.log(4.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))], dtype=D)
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    z = torch.randn(3, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(entropy_from_logits, (z,))


def test_errors():
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(logits, torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="logits"):
        token_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        shift_for_causal_lm(logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask"):
        sequence_logprob(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="reduce"):
        sequence_logprob(torch.zeros(2, 3), torch.ones(2, 3), "max")
