"""Input checks: every failure is a ValueError that names the argument."""

import pytest
import torch

from components.algorithms.validate import (
    check_choice,
    check_int,
    check_mask,
    check_same_shape,
    check_scalar,
    check_tensor,
    lookup,
)


def test_check_tensor_names_argument_and_shape():
    with pytest.raises(ValueError, match=r"logits: expected 3 dims \[B, T, V\], got shape \(2, 3\)"):
        check_tensor("logits", torch.zeros(2, 3), 3, "[B, T, V]")
    with pytest.raises(ValueError, match="logits: expected a torch.Tensor, got list"):
        check_tensor("logits", [1.0])


def test_check_same_shape_names_second_argument():
    with pytest.raises(ValueError, match=r"ref_logp: expected shape \(2, 3\) like logp, got \(2, 4\)"):
        check_same_shape("logp", torch.zeros(2, 3), "ref_logp", torch.zeros(2, 4))


def test_check_mask_accepts_bool_and_01_and_returns_bool():
    like = torch.zeros(2, 2)
    out = check_mask("mask", torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "x", like)
    assert out.dtype == torch.bool
    torch.testing.assert_close(out, torch.tensor([[True, False], [False, True]]))
    assert check_mask("mask", torch.ones(2, 2, dtype=torch.bool), "x", like).all()


def test_check_mask_rejects_non_binary_and_wrong_shape():
    like = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="mask: expected a bool or 0/1 mask"):
        check_mask("mask", torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "x", like)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 2\) like x"):
        check_mask("mask", torch.ones(2, 3), "x", like)


def test_check_scalar_bounds():
    assert check_scalar("beta", 0.5, low=0.0, high=1.0) == 0.5
    assert check_scalar("beta", torch.tensor(0.25)) == 0.25
    with pytest.raises(ValueError, match="beta: must be > 0.0"):
        check_scalar("beta", 0.0, low=0.0, low_open=True)
    with pytest.raises(ValueError, match="beta: must be <= 1.0"):
        check_scalar("beta", 2.0, high=1.0)
    with pytest.raises(ValueError, match="beta: expected a number"):
        check_scalar("beta", "0.1")
    with pytest.raises(ValueError, match="beta: got NaN"):
        check_scalar("beta", float("nan"))


def test_check_int_and_choice_and_lookup():
    assert check_int("k", 3, low=1) == 3
    with pytest.raises(ValueError, match="k: expected an int"):
        check_int("k", True)
    with pytest.raises(ValueError, match="k: must be >= 1"):
        check_int("k", 0, low=1)
    with pytest.raises(ValueError, match="reduce: unknown value 'max'; valid names: mean, sum"):
        check_choice("reduce", "max", ("sum", "mean"))
    with pytest.raises(ValueError, match="unknown thing 'c'; valid names: a, b"):
        lookup({"b": len, "a": len}, "thing", "c")
