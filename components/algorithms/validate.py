"""Input checks shared by every public function in ``components.algorithms``.

Each helper raises ``ValueError`` whose message starts with the offending
argument's name, so a trainer bug reads as "mask: expected shape (4, 7) like
logp, got (4, 8)" instead of a broadcasting error deep inside a loss.

Masks are accepted as ``bool`` or as 0/1 numbers and always come back as
``bool``; the losses use ``torch.where`` with them, so whatever sits in padded
positions (even inf/NaN) never reaches a loss value or a gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor


def check_tensor(name: str, x: Any, ndim: int | None = None, shape_doc: str = "") -> None:
    """Raise unless ``x`` is a tensor with ``ndim`` dimensions (any if None)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(f"{name}: expected {ndim} dims{doc}, got shape {tuple(x.shape)}")


def check_float(name: str, x: Tensor) -> None:
    """Raise unless ``x`` has a floating dtype (needed for log-probs, logits, rewards)."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise unless ``a`` and ``b`` are tensors of identical shape."""
    check_tensor(name_a, a)
    check_tensor(name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b}: expected shape {tuple(a.shape)} like {name_a}, got {tuple(b.shape)}"
        )


def check_mask(name: str, mask: Any, like_name: str, like: Tensor) -> Tensor:
    """Check that ``mask`` matches ``like``'s shape and holds only 0/1; return it as bool."""
    check_same_shape(like_name, like, name, mask)
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: expected a bool or 0/1 mask, found other values")
    return mask != 0


def check_token_tensors(mask: Any, logp_name: str, logp: Tensor, **others: Tensor) -> Tensor:
    """Check [B, T] float token tensors that share one mask; return the mask as bool.

    ``logp`` (named ``logp_name``) sets the shape; each of ``others`` must match it.
    """
    check_tensor(logp_name, logp, 2, "[B, T]")
    check_float(logp_name, logp)
    for name, x in others.items():
        check_same_shape(logp_name, logp, name, x)
        check_float(name, x)
    return check_mask("mask", mask, logp_name, logp)


def check_scalar(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check a real scalar lies in [low, high] (open ends if ``*_open``); return it as float."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name}: got NaN")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name}: must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name}: must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_int(name: str, value: Any, low: int | None = None) -> int:
    """Check ``value`` is an int (not bool) and >= low; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Raise unless ``value`` is one of ``choices`` (listed in the message)."""
    choices = sorted(choices)
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; valid names: {', '.join(choices)}")
    return value


def lookup(registry: Mapping[str, Callable], kind: str, name: str) -> Callable:
    """Fetch ``registry[name]`` or raise ``ValueError`` listing the valid names."""
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {name!r}; valid names: {valid}")
    return registry[name]
