"""Held-out evaluation shared by the reward-model trainers: a prompt-level split and the quality gate."""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch

from components.seeds import derive_seed


def split_heldout(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout): a seeded `fraction` (at least one, never all) of the distinct prompts goes to
    heldout with all its rows, so no prompt is both trained and evaluated on."""
    prompts = list(dict.fromkeys(str(r.get("prompt")) for r in rows))
    if len(prompts) < 2:
        raise ValueError("rows: need at least 2 distinct prompts to hold some out; give a separate held-out set")
    g = torch.Generator().manual_seed(derive_seed(seed, "heldout"))
    n_out = min(len(prompts) - 1, max(1, round(fraction * len(prompts))))
    out = {prompts[j] for j in torch.randperm(len(prompts), generator=g)[:n_out].tolist()}
    return [r for r in rows if str(r.get("prompt")) not in out], [r for r in rows if str(r.get("prompt")) in out]


def prefixed(metrics: Mapping[str, float], prefix: str = "heldout/") -> dict[str, float]:
    return {prefix + k: v for k, v in metrics.items()}


class GateResult(NamedTuple):
    passed: bool
    message: str  # one line naming the metric, its value and the threshold


def quality_gate(metrics: Mapping[str, float], metric: str, threshold: float, threshold_name: str,
                 what: str = "reward model") -> GateResult:
    """Pass iff ``metrics[metric] >= threshold``; a missing or NaN value fails."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(float(value)):
        return GateResult(False, f"{what} quality gate failed: {metric} was not measured "
                                 f"({threshold_name} = {threshold:.4f})")
    if float(value) >= threshold:
        return GateResult(True, f"{what} quality gate passed: {metric} = {float(value):.4f} >= "
                                f"{threshold_name} = {threshold:.4f}")
    return GateResult(False, f"{what} quality gate failed: {metric} = {float(value):.4f} < "
                             f"{threshold_name} = {threshold:.4f}")
