"""What every alignment method shares: loop and optimizer settings, the result record, a
token counter for the comparison, and the canonical row checks.

Every method has ONE signature (see `components.training.alignment.ALIGNMENT_METHODS`):

    run(policy, tokenizer, data, cfg, ckpt_dir, seed, *, reference=None, reward_fn=None,
        critic=None, log=no_log, progress=no_progress, stop_after=None) -> AlignmentResult

A method ignores the inputs it does not read (its registry entry lists the ones it does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from components.training.loop import LoopResult, Progress, no_progress


@dataclass
class AlignmentResult(LoopResult):
    tokens_generated: int = 0  # completion tokens sampled by this process (offline methods: 0)
    critic: Any = None  # the trained value model (ppo, oreo), else None


def result(loop: LoopResult, *, tokens_generated: int = 0, critic: Any = None) -> AlignmentResult:
    base = {f.name: getattr(loop, f.name) for f in fields(LoopResult)}
    return AlignmentResult(**base, tokens_generated=tokens_generated, critic=critic)


class TokenCount:
    """A progress callable that also sums each iteration's ``tokens`` metric (sampled tokens)."""

    def __init__(self, progress: Progress = no_progress):
        self.progress, self.total = progress, 0

    def __call__(self, step: int, total: int, metrics: dict) -> None:
        self.total += int(float(metrics.get("tokens", 0)))
        self.progress(step, total, metrics)


def check_rows(rows: list[dict], columns: dict[str, type], what: str) -> None:
    """Rows must be non-empty and carry each column with the given type (str: non-blank;
    float: a finite number). Raises one ValueError naming the method, row and column."""
    if not rows:
        raise ValueError(f"{what}: no training rows")
    for i, row in enumerate(rows):
        for column, kind in columns.items():
            value = row.get(column) if isinstance(row, dict) else None
            if kind is str and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{what}: row {i}: column '{column}' must be a non-empty string, got {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
                raise ValueError(f"{what}: row {i}: column '{column}' must be a finite number, got {value!r}")
