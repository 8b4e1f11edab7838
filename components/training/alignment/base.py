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
from typing import Any, Literal

from pydantic import Field

from components.config import Section
from components.training.loop import LoopResult, Progress, no_progress


class LoopConfig(Section):
    """How long a method runs and how often it checkpoints and logs."""

    steps: int = Field(100, ge=1, description="Iterations: optimizer steps (offline) or rollout batches (online).")
    ckpt_every: int = Field(20, ge=1, description="Save a resumable checkpoint every N iterations.")
    log_every: int = Field(1, ge=1, description="Log metrics every N iterations.")


class OptimConfig(LoopConfig):
    """AdamW settings of the Trainer (the policy's parameter group)."""

    lr: float = Field(1e-5, gt=0, description="Learning rate of the policy.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup, in iterations.")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule over iterations.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping, per module (policy, critic).")


class OfflineConfig(OptimConfig):
    """Methods that train on a fixed set of rows (DPO, ORPO, OREO)."""

    batch_size: int = Field(16, ge=1, description="Rows (pairs or trajectories) per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(256, ge=8, description="Prompt + response tokens; longer responses are cut.")
    system_prompt: str | None = Field(None, description="System message rendered before every prompt.")


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


def check_registered(value: str, registry, kind: str) -> str:
    """A config validator's check: `value` names an entry of `registry` (the error lists them)."""
    if value not in registry:
        raise ValueError(f"unknown {kind} {value!r}; choose from {sorted(registry)}")
    return value


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
