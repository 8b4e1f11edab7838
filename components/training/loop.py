"""A small, resumable optimisation loop shared by every gradient stage.

The loop owns what makes a run resumable and reproducible: the optimizer, the LR schedule,
checkpoints and RNG state. What a step computes is injected: `batch_fn(step, micro)` returns
the micro-batch for a position (a pure function of the seed, so the data position IS the
step), and `loss_fn(model, batch)` returns `(loss, metrics)`.

A run killed after step k and started again with the same arguments loads the newest
checkpoint (weights of the trainable parameters, optimizer, scheduler, RNG) and continues
from step k+1; it ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from components.io import atomic_dir

Log = Callable[[dict, int], None]
KEEP_CHECKPOINTS = 2


def no_log(metrics: dict, step: int) -> None:
    """The do-nothing logger: lets every component run untracked."""


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step `s` (linear warmup, then the schedule)."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = (s - warmup) / max(1, total - warmup)
        return {"constant": 1.0, "linear": 1.0 - progress,
                "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]
    return f


@dataclass
class LoopResult:
    steps: int
    resumed_from: int
    last_metrics: dict
    seconds: float


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler) -> None:
    with atomic_dir(ckpt_dir / f"step-{step:08d}") as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])},
                   tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
    for old in sorted(ckpt_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def load_latest_checkpoint(ckpt_dir: Path, model, optimizer, scheduler) -> int:
    """Restore the newest complete checkpoint; returns its step (0 if none)."""
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "meta.json").exists())
    if not done:
        return 0
    latest = done[-1]
    params = dict(model.named_parameters())
    for name, value in load_file(str(latest / "trainable.safetensors")).items():
        params[name].data.copy_(value)
    state = torch.load(latest / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))
    return json.loads((latest / "meta.json").read_text())["step"]


def make_optimizer(model, cfg):
    """AdamW over the trainable parameters and cfg's LR schedule (over cfg.steps); returns (params, opt, sched)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, cfg.steps))
    return params, optimizer, scheduler


def train_loop(model, batch_fn, loss_fn, cfg, ckpt_dir: str | Path, log: Log = no_log,
               stop_after: int | None = None) -> LoopResult:
    """Run `cfg.steps` optimizer steps (cfg is a TrainConfig), resuming from `ckpt_dir`.

    `stop_after` ends the run early after that step (used to test kill-and-resume).
    """
    ckpt_dir = Path(ckpt_dir)
    params, optimizer, scheduler = make_optimizer(model, cfg)
    start = load_latest_checkpoint(ckpt_dir, model, optimizer, scheduler)
    model.train()
    t0, metrics = time.perf_counter(), {}
    for step in range(start + 1, cfg.steps + 1):
        metrics = _one_step(model, params, optimizer, batch_fn, loss_fn, cfg, step)
        scheduler.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log({**metrics, "lr": scheduler.get_last_lr()[0]}, step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or step == stop_after:
            save_checkpoint(ckpt_dir, step, model, optimizer, scheduler)
        if step == stop_after:
            break
    return LoopResult(steps=cfg.steps, resumed_from=start, last_metrics=metrics,
                      seconds=time.perf_counter() - t0)


def _one_step(model, params, optimizer, batch_fn, loss_fn, cfg, step: int) -> dict:
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        loss, metrics = loss_fn(model, batch_fn(step, micro))
        (loss / cfg.grad_accum).backward()
        for k, v in {"loss": loss.item(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise RuntimeError("no gradient reached any trainable parameter")
    sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    optimizer.step()
    return sums
