"""The one place where token/sequence normalisation lives."""

import pytest
import torch

from components.algorithms.aggregate import AGGREGATIONS, aggregate_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize(
    "mode, kwargs, expected",
    [
        # 21 loss over 6 tokens
        ("token-mean", {}, 21.0 / 6.0),
        # row means 10/4 = 2.5 and 11/2 = 5.5, averaged
        ("seq-mean-token-mean", {}, 4.0),
        # row sums 10 and 11, averaged
        ("seq-mean-token-sum", {}, 10.5),
        # row sums averaged, divided by the constant (default T = 4)
        ("seq-mean-token-sum-norm", {}, 10.5 / 4.0),
        ("seq-mean-token-sum-norm", {"norm_constant": 7.0}, 1.5),
    ],
)
def test_modes_by_hand(mode, kwargs, expected):
    out = aggregate_loss(LOSS, MASK, mode, **kwargs)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def naive(loss, mask, mode, norm_constant=None):
    rows = [[loss[b, t].item() for t in range(loss.shape[1]) if mask[b, t]] for b in range(loss.shape[0])]
    rows = [r for r in rows if r]
    if not rows:
        return 0.0
    if mode == "token-mean":
        return sum(map(sum, rows)) / sum(map(len, rows))
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    if mode == "seq-mean-token-sum":
        return sum(map(sum, rows)) / len(rows)
    c = loss.shape[1] if norm_constant is None else norm_constant
    return sum(map(sum, rows)) / len(rows) / c


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_vectorised_equals_naive_loop(mode):
    for seed in range(4):
        torch.manual_seed(seed)
        b, t = torch.randint(1, 6, (2,)).tolist()
        loss = torch.randn(b, t, dtype=torch.float64)
        mask = torch.rand(b, t) > 0.4
        mask[0] = False  # always include an empty row
        expected = torch.tensor(naive(loss, mask, mode), dtype=torch.float64)
        torch.testing.assert_close(aggregate_loss(loss, mask, mode), expected)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_padding_and_empty_rows_change_nothing(mode):
    """Junk in padded slots and an extra fully padded row leave loss and gradients alone."""
    torch.manual_seed(0)
    loss = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    ref = aggregate_loss(loss, mask, mode, norm_constant=5.0)
    junk = torch.where(mask, loss, 1e3 * torch.randn(3, 5, dtype=torch.float64))
    padded = torch.cat([junk, 1e3 * torch.randn(1, 5, dtype=torch.float64)]).requires_grad_(True)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)])
    out = aggregate_loss(padded, padded_mask, mode, norm_constant=5.0)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert (padded.grad[~padded_mask] == 0).all()


def test_all_masked_is_zero():
    for mode in AGGREGATIONS:
        assert aggregate_loss(LOSS, torch.zeros_like(MASK), mode).item() == 0.0


def test_errors():
    names = "seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, token-mean"
    with pytest.raises(ValueError, match=f"valid names: {names}"):
        aggregate_loss(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="mask"):
        aggregate_loss(LOSS, MASK[:, :3])
    with pytest.raises(ValueError, match="mask"):
        aggregate_loss(LOSS, MASK * 2)
    with pytest.raises(ValueError, match="loss"):
        aggregate_loss(LOSS[0], MASK[0])
    with pytest.raises(ValueError, match="norm_constant"):
        aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm_constant=0.0)
