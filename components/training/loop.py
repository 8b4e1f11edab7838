"""The one optimisation loop every gradient stage runs in: `Trainer`.

The trainer owns what makes a run resumable, reproducible and observable: the optimizer
(AdamW over the trainable parameters of one or more modules, one parameter group each, or Muon
with AdamW when the section's `optimizer` says so: components/training/optimizers.py), the
LR schedule, gradient accumulation and clipping, checkpoints (trainable weights, optimizer,
scheduler, RNG, update count), logging and progress. A method supplies only what one
iteration computes:

    trainer = Trainer({"policy": model}, cfg, ckpt_dir, log=log, progress=progress)
    def iteration(it):                       # it = 1..cfg.steps; the data position IS `it`
        batch = batch_fn(it)
        return trainer.step([lambda: loss_fn(model, batch)])   # one optimizer step
    trainer.run(iteration)

An iteration may take any number of optimizer steps (PPO/GRPO epochs over a rollout batch, or
none when every group was dropped); the LR schedule counts iterations. A run killed after
iteration k and started again with the same arguments resumes from the newest complete
checkpoint and ends with the same weights as an uninterrupted run (a method's own run state,
such as GRPO's prompt pool, rides in the checkpoints through `Trainer(..., state=...)`).

With several modules (PPO's policy and critic), each parameter group is clipped to
`max_grad_norm` on its own, so a large critic gradient never shrinks the policy's step.
A method whose update is not a gradient step (TRPO's natural-gradient step with a line
search) calls `trainer.update(fn)` instead of `step`: `fn` writes the new parameters itself
and the trainer still counts, checkpoints, resumes and logs.

An RL method that makes no effective update must not publish an unchanged model: with
`require_update`, `run` raises `NoUpdateError` when no optimizer step was taken or the
trainable weights did not move.

Data parallelism (N processes, `tasks/launch.py`; see `Trainer`) splits each optimizer step's
micro-batches across the processes and sums the gradients: the update is the one-process update
with the same global batch (batch_size x grad_accum), up to float summation order.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import torch
from safetensors.torch import load_file, save_file

from components.io import atomic_dir
from components.training import distributed as dist
from components.training.optimizers import build_optimizer

Log = Callable[[dict, int], None]
MicroLoss = Callable[[], "tuple[torch.Tensor, dict]"]
KEEP_CHECKPOINTS = 2


def no_log(metrics: dict, step: int) -> None:
    """The do-nothing logger: lets every component run untracked."""


class Progress(Protocol):
    """Told after every unit of work: (done, total, latest metrics, phase). The trainer reports
    iterations (phase "train"); long generation passes report rows (phase "sampling")."""

    def __call__(self, step: int, total: int, metrics: dict, phase: str = "train") -> None: ...


def no_progress(step: int, total: int, metrics: dict, phase: str = "train") -> None:
    """The do-nothing progress display."""


class Stateful(Protocol):
    """Run state beside the weights (e.g. GRPO's prompt pool) that a checkpoint saves and a resume restores."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class NoUpdateError(RuntimeError):
    """Training finished without changing the trainable weights."""


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at step `s` (linear warmup, then the schedule)."""
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
    updates: int = 0  # optimizer steps taken over the whole run (resumed part included)


def as_floats(metrics: Mapping) -> dict[str, float]:
    """Metrics as plain floats (tensors are synced here, once per log line, not once per step)."""
    return {k: float(v) for k, v in metrics.items()}


def shares(sizes: list[float]) -> list[float]:
    """Each size's share of their sum (equal shares when they sum to 0): the `Trainer.step` weights
    that make an accumulated step's loss the mean over the whole step's rows or tokens."""
    total = sum(sizes)
    return [size / total for size in sizes] if total else [1.0 / len(sizes)] * len(sizes)


class Trainer:
    """AdamW (or `cfg.optimizer`) + schedule + accumulation + clipping + checkpoint/resume + logging for `modules`.

    `modules` maps a name to a module; the trainable parameters (``requires_grad``) of each
    form one parameter group, at `lrs[name]` (default ``cfg.lr``). `cfg` provides steps, lr,
    weight_decay, warmup_steps, schedule, max_grad_norm, log_every and ckpt_every.

    Data parallelism, when `torch.distributed` is initialized with N > 1 processes. Where DDP
    gives each process its own batch and averages gradients inside `backward`, this trainer
    splits each optimizer step's micro-batches: process r computes the micro-batches i with
    i % N == r, each weighted by its GLOBAL weight w_i (1/n of the whole step by default), and
    the gradients are then summed over the processes (an all-reduce per parameter, before
    clipping). Every process so holds sum_i w_i * grad(loss_i), the one-process gradient of the
    same global batch up to the order of float additions, clips it to the same norm and takes
    the same AdamW step. Why not DDP: the weights stay identical everywhere without a wrapper,
    bucket hooks or `no_sync` (step functions never see a wrapped model), and a recipe's
    batch_size x grad_accum is the same global batch at any N (N must divide the micro-batches).
    The weighted metrics are summed likewise; trainable weights are broadcast from rank 0 at
    start. Only rank 0 writes checkpoints (everyone waits at a barrier after each) and calls
    `log` and `progress`; every rank reads the checkpoint it resumes from (the folder must be
    shared). Stochastic layers (dropout) would draw other masks than in one process; r1flow's
    models have none while training.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], cfg, ckpt_dir: str | Path, *, log: Log = no_log,
                 progress: Progress = no_progress, lrs: Mapping[str, float] | None = None,
                 require_update: bool = False, what: str = "training", state: Mapping[str, Stateful] | None = None):
        self.modules, self.cfg, self.ckpt_dir = dict(modules), cfg, Path(ckpt_dir)
        self.state = dict(state or {})  # more of the run's state that each checkpoint holds (JSON)
        self.log, self.progress, self.require_update, self.what = log, progress, require_update, what
        groups = []
        for name, module in self.modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": (lrs or {}).get(name, cfg.lr), "name": name})
        if not groups:
            raise ValueError(f"{what}: the model has no trainable parameters")
        dtypes = {p.dtype for g in groups for p in g["params"]}
        if torch.float16 in dtypes:  # AdamW's eps (1e-8) and grad**2 underflow to 0: inf/NaN weights after one step
            raise ValueError(f"{what}: trainable weights in float16 cannot take AdamW steps (no loss scaling); use "
                             "model.dtype float32 (+ mixed_precision bf16), or LoRA/QLoRA (adapters train in float32)")
        if torch.bfloat16 in dtypes:
            warnings.warn(f"{what}: trainable weights in bfloat16: AdamW steps smaller than the weights' bf16 "
                          "resolution (lr 1e-6..1e-5 on weights ~0.02) are rounded away; prefer model.dtype float32 "
                          "with mixed_precision bf16, or LoRA", stacklevel=2)
        self.groups = [(g["name"], g["params"]) for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(getattr(cfg, "optimizer", "adamw"), groups, self.modules, cfg.lr,
                                         cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, cfg.steps))
        self.updates = 0
        # identical trainable weights everywhere (DDP does the same), whatever each rank initialised
        dist.broadcast_([p.detach() for p in self.params])
        self._start_fingerprint = self.fingerprint() if require_update else None

    # -- one optimizer step -------------------------------------------------------------

    def step(self, micro_losses: Iterable[MicroLoss], weights: Iterable[float] | None = None) -> dict:
        """One optimizer step over micro-batches: sum_i w_i * loss_i (w_i = 1/n by default)
        back-propagated one micro-batch at a time, then clipping and AdamW.

        Each element of `micro_losses` is a zero-argument callable returning (loss, metrics);
        it is called only when its turn comes, so at most one micro-batch graph is alive.
        Returns the weighted metrics (detached tensors; no host sync) plus ``grad_norm``.
        With N processes, this process computes only micro-batches i % N == rank (see the class).
        """
        micro_losses = list(micro_losses)
        weights = list(weights) if weights is not None else [1.0 / len(micro_losses)] * len(micro_losses)
        n, rank = dist.world_size(), dist.rank()
        if len(micro_losses) % n:
            raise ValueError(f"{self.what}: {len(micro_losses)} micro-batches per optimizer step (grad_accum) "
                             f"cannot be split evenly across {n} processes (num_processes); make grad_accum a "
                             f"multiple of {n}")
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict = {}
        for fn, w in list(zip(micro_losses, weights))[rank::n]:
            loss, metrics = fn()
            (loss * w).backward()
            for k, v in {"loss": loss.detach(), **metrics}.items():
                v = v.detach() if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums.get(k, 0.0) + v * w
        if n > 1:
            sums = self._sum_over_processes(sums)
        if not any(p.grad is not None for p in self.params):
            raise RuntimeError(f"{self.what}: no gradient reached any trainable parameter")
        sums.update(self._clip())
        self.optimizer.step()
        self.updates += 1
        return sums

    def _sum_over_processes(self, sums: dict) -> dict:
        """All-reduce (SUM) the gradients and the weighted metrics. A parameter no process gave a
        gradient keeps ``grad=None`` (AdamW then skips it, as in one process)."""
        device = self.params[0].device
        has_grad = torch.tensor([float(p.grad is not None) for p in self.params], device=device)
        dist.all_reduce_sum_([has_grad])
        for p, anywhere in zip(self.params, has_grad.tolist()):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
        keys = sorted(sums)
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device) for k in keys])
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = {dtype: torch.cat([g.reshape(-1) for g in grads if g.dtype == dtype])
                for dtype in {g.dtype for g in grads}}
        dist.all_reduce_sum_([*flat.values(), values])  # one message per dtype, not one per parameter
        offsets = dict.fromkeys(flat, 0)
        for g in grads:
            g.copy_(flat[g.dtype][offsets[g.dtype]: offsets[g.dtype] + g.numel()].view_as(g))
            offsets[g.dtype] += g.numel()
        return dict(zip(keys, values.unbind()))

    def _clip(self) -> dict:
        """Clip each parameter group to max_grad_norm; returns the pre-clip norms (the total as
        ``grad_norm``, and ``grad_norm/<module>`` per group when there are several)."""
        norms = {name: torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm) for name, params in self.groups}
        out = {"grad_norm": torch.stack(list(norms.values())).square().sum().sqrt()}
        if len(norms) > 1:
            out.update({f"grad_norm/{name}": n for name, n in norms.items()})
        return out

    def update(self, fn: Callable[[], "tuple[bool, dict]"]) -> dict:
        """One optimizer-free update: `fn` writes new values into the trainable parameters itself
        (e.g. TRPO's natural-gradient step) and returns (changed, metrics); it runs under
        no_grad and counts as an update when it changed the parameters."""
        if dist.world_size() > 1:
            raise NotImplementedError(f"{self.what}: optimizer-free updates are not data-parallel; run in one process")
        with torch.no_grad():
            changed, metrics = fn()
        self.updates += int(bool(changed))
        return dict(metrics)

    # -- the loop -------------------------------------------------------------------------

    def run(self, iteration: Callable[[int], dict], stop_after: int | None = None,
            after_resume: Callable[[], None] | None = None) -> LoopResult:
        """Iterations ``resumed+1 .. cfg.steps``; `stop_after` ends early after that iteration
        (with a checkpoint; used to test kill-and-resume). `after_resume` runs once weights
        were restored from a checkpoint (e.g. to push them into a rollout engine)."""
        cfg = self.cfg
        start = self.resume()
        if start and after_resume is not None:
            after_resume()
        for m in self.modules.values():
            m.train()
        t0, metrics = time.perf_counter(), {}
        for it in range(start + 1, cfg.steps + 1):
            t_it = time.perf_counter()
            metrics = dict(iteration(it))
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            with warnings.catch_warnings():  # an iteration without an optimizer step (all groups dropped)
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                self.scheduler.step()
            metrics["time/iteration_s"] = time.perf_counter() - t_it
            if it % cfg.log_every == 0 or it == cfg.steps:
                metrics = as_floats(metrics)
                if dist.is_main():
                    self.log(metrics, it)
            if dist.is_main():
                self.progress(it, cfg.steps, metrics)
            if it % cfg.ckpt_every == 0 or it == cfg.steps or it == stop_after:
                self.save(it)
            if it == stop_after:
                break
        else:
            self._check_update()
        return LoopResult(steps=cfg.steps, resumed_from=start, last_metrics=as_floats(metrics),
                          seconds=time.perf_counter() - t0, updates=self.updates)

    def _check_update(self) -> None:
        if not self.require_update:
            return
        if self.updates == 0:
            raise NoUpdateError(f"{self.what}: no optimizer step was taken in {self.cfg.steps} iterations "
                                "(every batch was skipped); the model is not published")
        if self.fingerprint() == self._start_fingerprint:
            raise NoUpdateError(f"{self.what}: the trainable weights did not move in {self.updates} optimizer "
                                "steps; the model is not published")

    def fingerprint(self) -> tuple[float, ...]:
        """A cheap summary of the trainable weights (no copy): per-tensor sums and norms."""
        with torch.no_grad():
            return tuple(v for p in self.params for v in (float(p.double().sum()), float(p.double().norm())))

    # -- checkpoints ------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{n}": p.detach().contiguous()
                for name, m in self.modules.items() for n, p in m.named_parameters() if p.requires_grad}

    def save(self, step: int) -> None:
        """Write the checkpoint of `step` (rank 0 only: every rank holds the same state; all wait for it)."""
        if dist.is_main():
            self._write(step)
        dist.barrier()

    def _write(self, step: int) -> None:
        with atomic_dir(self.ckpt_dir / f"step-{step:08d}") as tmp:
            save_file(self.trainable_state(), str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])},
                       tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps({"step": step, "updates": self.updates}))
            if self.state:
                (tmp / "state.json").write_text(json.dumps({k: v.state_dict() for k, v in self.state.items()}))
        for old in sorted(self.ckpt_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> int:
        """Restore the newest complete checkpoint; returns its step (0 if none)."""
        done = sorted(p for p in self.ckpt_dir.glob("step-*") if (p / "meta.json").exists())
        if not done:
            return 0
        latest = done[-1]
        params = {f"{name}.{n}": p for name, m in self.modules.items() for n, p in m.named_parameters()}
        with torch.no_grad():
            for name, value in load_file(str(latest / "trainable.safetensors")).items():
                params[name].copy_(value)
        state = torch.load(latest / "state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        meta = json.loads((latest / "meta.json").read_text())
        self.updates = meta.get("updates", 0)
        if self.state:
            if not (latest / "state.json").exists():
                raise RuntimeError(f"{self.what}: checkpoint {latest} holds no run state ({', '.join(self.state)}); "
                                   "it was written by another version: delete the folder to start over")
            saved = json.loads((latest / "state.json").read_text())
            for name, holder in self.state.items():
                holder.load_state_dict(saved[name])
        return meta["step"]
