"""Process reward model (Math-Shepherd style): per-step correctness from Monte-Carlo labels.

The step labels come from `components.training.prm_labels.label_steps` (rollouts of the policy
from every step prefix). `run_prm` trains a token-classification model (see
`components.modeling.reward_models` for the score convention: sigmoid of the logit at the last
token of each step) with `process_reward_loss`, binary cross-entropy at the step-end positions
(Lightman et al. 2023; Wang et al. 2024, Eq. 3), through `Trainer` (resumable). Held-out
metrics: step-label accuracy, expected calibration error and Brier score of the step scores,
and the mean solution score (the minimum over its steps, as Math-Shepherd ranks solutions) of
solutions with a correct vs an incorrect final answer.

Departures: solutions longer than `max_length` tokens are dropped (counted), not truncated; soft
labels are trained with the same BCE (a soft target) and count as positive at >= 0.5 for the
step accuracy; the held-out split is by prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from components.algorithms import (
    binary_accuracy, brier_score, expected_calibration_error, process_reward_loss)
from components.data.steps import split_steps
from components.modeling.reward_models import encode_steps, step_logits, step_scores
from components.training.configs import PRMConfig
from components.training.grpo import pick_prompts
from components.training.heldout import GateResult, prefixed, quality_gate, split_heldout
from components.training.loop import Log, LoopResult, Progress, Trainer, no_log, no_progress

@dataclass(frozen=True)
class EncodedSolution:
    ids: list[int]
    positions: list[int]  # token position of each step's last character
    labels: list[float]
    correct: bool


def parse_solutions(rows: list, sep: str, name: str = "rows") -> list[dict]:
    """Checked labelled solutions ``{"prompt", "completion", "labels", "correct"}``; errors name the row."""
    if not rows:
        raise ValueError(f"{name}: no labelled solutions")
    out = []
    for i, row in enumerate(rows):
        where = f"{name}[{i}]"
        missing = [c for c in ("prompt", "completion", "labels") if not isinstance(row, dict) or c not in row]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing}")
        n_steps = len(split_steps(row["completion"], sep))
        labels = row["labels"]
        if not isinstance(labels, list) or len(labels) != n_steps or n_steps == 0:
            raise ValueError(f"{where}: column 'labels' needs one label per step ({n_steps} steps with "
                             f"sep={sep!r}), got {labels!r}")
        if any(isinstance(y, bool) or not isinstance(y, (int, float)) or not 0 <= y <= 1 for y in labels):
            raise ValueError(f"{where}: column 'labels' must hold numbers in [0, 1], got {labels!r}")
        out.append({"prompt": row["prompt"], "completion": row["completion"], "labels": [float(y) for y in labels],
                    "correct": bool(row.get("correct", labels[-1] >= 0.5))})
    return out


def encode_solutions(tokenizer, solutions: list[dict], cfg: PRMConfig, what: str
                     ) -> tuple[list[EncodedSolution], int]:
    """Encoded `parse_solutions` output and the number dropped for exceeding `cfg.max_length` tokens."""
    out, dropped = [], 0
    for sol in solutions:
        ids, positions = encode_steps(tokenizer, sol["prompt"], sol["completion"], cfg.sep, cfg.system_prompt)
        if len(ids) > cfg.max_length:
            dropped += 1
            continue
        out.append(EncodedSolution(ids, positions, sol["labels"], sol["correct"]))
    if not out:
        raise ValueError(f"{what}: all {len(solutions)} solutions are longer than max_length={cfg.max_length} tokens")
    return out, dropped


def step_loss(model, batch: list[EncodedSolution], pad_id: int, loss_agg: str) -> tuple[torch.Tensor, dict]:
    logits, mask = step_logits(model, [s.ids for s in batch], [s.positions for s in batch], pad_id)
    labels = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
    for r, s in enumerate(batch):
        labels[r, : len(s.labels)] = torch.tensor(s.labels, dtype=logits.dtype)
    probs = torch.sigmoid(logits.detach())
    return process_reward_loss(logits, labels, mask, loss_agg), {"step_accuracy": binary_accuracy(probs, labels, mask)}


def evaluate_solutions(model, solutions: list[EncodedSolution], batch_size: int = 128) -> dict[str, float]:
    """Step accuracy, ECE, Brier score; mean min-step score of correct and of incorrect solutions."""
    scores = step_scores(model, [s.ids for s in solutions], [s.positions for s in solutions], batch_size)
    probs = torch.tensor([p for row in scores for p in row], dtype=torch.float64)
    labels = torch.tensor([y for s in solutions for y in s.labels], dtype=torch.float64)
    out = {"step_accuracy": float(binary_accuracy(probs, labels)), "ece": float(expected_calibration_error(probs, labels)),
           "brier": float(brier_score(probs, labels)), "label_mean": float(labels.mean()),
           "solutions": float(len(solutions)), "steps": float(labels.numel())}
    for name, want in (("correct", True), ("incorrect", False)):
        mins = [min(row) for row, s in zip(scores, solutions) if s.correct == want]
        out[f"score_{name}"] = sum(mins) / len(mins) if mins else float("nan")
    return out


@dataclass
class PRMResult(LoopResult):
    heldout: dict = field(default_factory=dict)  # evaluate_solutions() of the final model ({} if stopped early)
    train_solutions: int = 0
    heldout_solutions: int = 0
    dropped_overlong: int = 0


def run_prm(model, tokenizer, labelled: list[dict], cfg: PRMConfig, ckpt_dir, seed: int, *,
            heldout_rows: list[dict] | None = None, log: Log = no_log, progress: Progress = no_progress,
            stop_after: int | None = None) -> PRMResult:
    """Train `model` (from `load_reward_model(..., "process")`) on labelled solutions; resumable."""
    parsed = parse_solutions(labelled, cfg.sep, "rows")
    train_rows, held = ((parsed, parse_solutions(heldout_rows, cfg.sep, "heldout_rows")) if heldout_rows is not None
                        else split_heldout(parsed, cfg.heldout_fraction, seed))
    train, dropped = encode_solutions(tokenizer, train_rows, cfg, "PRM training")
    heldout, dropped_held = encode_solutions(tokenizer, held, cfg, "PRM held-out")
    log({"data/train_solutions": len(train), "data/heldout_solutions": len(heldout),
         "data/dropped_overlong": dropped + dropped_held}, 0)
    pad, per_step = model.config.pad_token_id, cfg.batch_size * cfg.grad_accum
    trainer = Trainer({"prm": model}, cfg, ckpt_dir, log=log, progress=progress, what="process reward model")

    def iteration(it: int) -> dict:
        picks = pick_prompts(len(train), per_step, seed, it)
        micro = [[train[j] for j in picks[m : m + cfg.batch_size]] for m in range(0, per_step, cfg.batch_size)]
        return trainer.step([lambda b=b: step_loss(model, b, pad, cfg.loss_agg) for b in micro])

    result = trainer.run(iteration, stop_after=stop_after)
    final = {}
    if stop_after is None or stop_after >= cfg.steps:
        final = evaluate_solutions(model, heldout, cfg.eval_batch_size)
        log(prefixed(final), cfg.steps)
    return PRMResult(**vars(result), heldout=final, train_solutions=len(train), heldout_solutions=len(heldout),
                     dropped_overlong=dropped + dropped_held)


def prm_gate(heldout: Mapping[str, float], cfg: PRMConfig,
             threshold_name: str = "process_reward_model.min_step_accuracy") -> GateResult:
    """Held-out step-label accuracy (`PRMResult.heldout`) against `cfg.min_step_accuracy`."""
    return quality_gate(prefixed(heldout), "heldout/step_accuracy", cfg.min_step_accuracy, threshold_name,
                        what="process reward model")
