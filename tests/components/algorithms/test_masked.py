"""Masked reductions, whitening and last-valid-index."""

import pytest
import torch

from components.algorithms.masked import (
    fill_padding,
    last_valid_index,
    masked_mean,
    masked_sum,
    masked_var,
    whiten,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_and_mean_by_hand():
    """Selected entries are 1, 2 | 4: global sum 7, mean 7/3; per row sums 3, 4 and means 1.5, 4."""
    torch.testing.assert_close(masked_sum(X, M), torch.tensor(7.0, dtype=torch.float64))
    torch.testing.assert_close(masked_mean(X, M), torch.tensor(7.0 / 3.0, dtype=torch.float64))
    torch.testing.assert_close(masked_sum(X, M, dim=-1), torch.tensor([3.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(masked_mean(X, M, dim=-1), torch.tensor([1.5, 4.0], dtype=torch.float64))


def test_empty_selection_gives_zero_not_nan():
    empty = torch.zeros_like(M)
    assert masked_mean(X, empty).item() == 0.0
    torch.testing.assert_close(masked_mean(X, empty, dim=-1), torch.zeros(2, dtype=torch.float64))


def test_padding_junk_never_leaks_even_inf_nan():
    junk = X.clone()
    junk[0, 2], junk[1, 1], junk[1, 2] = float("inf"), float("nan"), -1e30
    junk.requires_grad_(True)
    out = masked_mean(junk, M)
    torch.testing.assert_close(out.detach(), masked_mean(X, M))
    out.backward()
    assert junk.grad[0, 2] == 0 and junk.grad[1, 1] == 0 and junk.grad[1, 2] == 0
    assert torch.isfinite(junk.grad).all()


def test_masked_var_by_hand():
    """Selected [1, 3]: mean 2, biased var ((1-2)^2 + (3-2)^2)/2 = 1, unbiased 2."""
    x = torch.tensor([[1.0, 99.0, 3.0]])
    m = torch.tensor([[1, 0, 1]])
    torch.testing.assert_close(masked_var(x, m), torch.tensor(1.0))
    torch.testing.assert_close(masked_var(x, m, unbiased=True), torch.tensor(2.0))


def test_whiten_by_hand():
    """[1, 3] has mean 2 and std 1 -> [-1, 1]; shift_mean=False adds the mean back -> [1, 3]; padding -> 0."""
    x = torch.tensor([[1.0, 3.0, 1e6]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(whiten(x, m, eps=0.0), torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(
        whiten(x, m, shift_mean=False, eps=0.0), torch.tensor([[1.0, 3.0, 0.0]], dtype=torch.float64)
    )


def test_whiten_random_has_zero_mean_unit_var():
    torch.manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64) * 5 + 2
    m = torch.rand(3, 7) > 0.3
    y = whiten(x, m, eps=0.0)
    torch.testing.assert_close(masked_mean(y, m), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(masked_var(y, m), torch.tensor(1.0, dtype=torch.float64))


def test_last_valid_index_and_fill_padding():
    m = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    torch.testing.assert_close(last_valid_index(m), torch.tensor([1, -1, 2]))
    expected = torch.tensor([[1.0, 2.0, -1.0], [4.0, -1.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(fill_padding(X, M, -1.0), expected)


def test_mask_errors_name_mask():
    with pytest.raises(ValueError, match="mask"):
        masked_mean(X, torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask"):
        whiten(X, torch.full((2, 3), 2))
