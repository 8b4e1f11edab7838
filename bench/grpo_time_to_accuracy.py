"""Time to accuracy: GRPO in r1flow vs TRL's GRPOTrainer from the same SFT checkpoint (issue 11).

Run by hand once the default recipe has run (not a test):

    .venv/bin/uv pip install --python .venv/bin/python 'trl==1.16.0'    # or: make bench
    .venv/bin/python bench/grpo_time_to_accuracy.py [--start models:/default@sft] [--budget 240]

Both sides start from the checkpoint the default recipe's `sft` stage produced, train on the same
prompts (data/rl_prompts.jsonl, the first 4,000) with GRPO settings both have (those of the
default recipe until 2026-12-05: 64 prompts a step at a constant rate with beta 0.02; the recipe
now takes 32 with a cosine decay over its 300 iterations, which a wall-clock budget has no
iteration count for, and no KL term), for the same wall-clock budget of training, one after the
other in one process. At every --eval-every seconds of training time the policy is scored greedily
on the same held-out problems (data/eval.jsonl, 1,000) by the same evaluator
(`components.evaluation.accuracy.evaluate`); evaluation time is not training time (the clock is
paused). Reported: the accuracy-versus-training-time curve of both (table + PNG) and the share of
TRL's budget r1flow needs to reach TRL's final accuracy (target <= 0.5).

Settings, identical on both sides unless listed below: G = 8 samples per prompt, 64 prompts
per step, one optimizer step per rollout batch, at most 64 new tokens, temperature 1, lr 1e-4
constant, beta 0.02 (k3 KL to the frozen start model), clip 0.2 / 0.28, token-mean loss,
rewards exact_int (1.0) + format (0.2), torch threads --threads (1: the setting that was stable
on the shared 2-core machine), and --mixed-precision (default bf16: matmuls in bfloat16 under
torch.autocast, float32 weights; r1flow's model.mixed_precision, TRL's bf16=True; this CPU has
AVX512-BF16. `--mixed-precision no` runs both in float32).
What differs, and why (each is part of what r1flow is):
  * r1flow samples with its own rollout engine (batched KV-cache decoding, per-sequence early
    stop); TRL calls `model.generate`.
  * r1flow first estimates every prompt's pass rate (4 samples each, counted in its clock) and
    trains only on prompts it solves sometimes (pass-rate band [0.1, 0.9]); TRL trains on all.
  * r1flow drops groups whose rewards are all equal (no gradient, DAPO); TRL trains on them
    with zero advantage (its KL term still acts).
  * with --retire-solved (off by default, as in the default recipe), r1flow retires a prompt once
    all G of its samples came out correct; TRL keeps drawing every prompt.
Defaults reproduce the figure in the README.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.console import quiet_libraries  # noqa: E402

quiet_libraries()  # before transformers is imported: the clock's lines are the output

import torch  # noqa: E402

from components.config import RewardItem, RLConfig  # noqa: E402
from components.data.prompts import render_prompt  # noqa: E402
from components.evaluation.accuracy import evaluate  # noqa: E402
from components.rewards import exact_int, format_reward  # noqa: E402
from components.training.grpo import run_grpo  # noqa: E402
from components.training.precision import mixed_precision  # noqa: E402

REWARD_WEIGHTS = {"exact_int": 1.0, "format": 0.2}


class Clock:
    """Training time: wall time minus the time spent evaluating; evaluates at every `every` seconds."""

    def __init__(self, budget: float, every: float, score):
        self.budget, self.every, self.score = budget, every, score
        self.start, self.paused, self.next = time.perf_counter(), 0.0, every
        self.curve: list[tuple[float, float]] = []
        self.steps = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def tick(self, model) -> bool:
        """Called after every optimizer step: evaluate if a checkpoint time passed; True once the budget is spent."""
        self.steps += 1
        t = self.elapsed()
        if t >= self.next or t >= self.budget:
            t0 = time.perf_counter()
            self.curve.append((t, self.score(model)))
            self.paused += time.perf_counter() - t0
            print(f"    {t:6.1f} s  accuracy {self.curve[-1][1]:.3f}", flush=True)
            while self.next <= t:
                self.next += self.every
        return t >= self.budget


class Spent(Exception):
    """The training budget is spent."""


def r1flow_side(start: str, rows: list[dict], a, clock: Clock) -> None:
    from components.modeling.models import load_model, load_tokenizer

    model, tok = load_model(start), load_tokenizer(start)
    cfg = RLConfig(steps=100_000, prompts_per_step=a.prompts, group_size=a.G, max_new_tokens=a.max_new,
                   minibatch_size=a.prompts * a.G, lr=a.lr, beta=a.beta, pass_rate_band=(0.1, 0.9),
                   pass_rate_samples=4, retire_solved=a.retire_solved,
                   rewards=[RewardItem(name=k, weight=w) for k, w in REWARD_WEIGHTS.items()],
                   ckpt_every=10_000_000, log_every=1)

    def log(metrics, step):
        if step > 0 and clock.tick(model):
            raise Spent

    with tempfile.TemporaryDirectory() as ckpt:
        try:
            with mixed_precision(a.mixed_precision, "cpu"):
                run_grpo(model, tok, rows, cfg, ckpt, seed=a.seed, log=log)
        except Spent:
            pass


def trl_side(start: str, rows: list[dict], a, clock: Clock) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(start)

    def exact_int_reward(completions, answer, **_):
        return exact_int(completions, answer=answer)

    def format_reward_fn(completions, **_):
        return format_reward(completions)

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if clock.tick(model):
                control.should_training_stop = True

    data = Dataset.from_list([{"prompt": render_prompt(tok, r["prompt"]), "answer": r["answer"]} for r in rows])
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), **trl_settings(a))
    trainer = GRPOTrainer(model=start, reward_funcs=[exact_int_reward, format_reward_fn], args=args,
                          train_dataset=data, processing_class=tok, callbacks=[Budget()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def trl_settings(a) -> dict:
    """GRPOConfig's arguments: the r1flow side's settings in TRL's terms (one rollout batch of
    prompts x G sequences feeds one optimizer step; the clock, not max_steps, ends training)."""
    return dict(
        bf16=a.mixed_precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10**9, disable_tqdm=True,  # the clock's lines are the output
        max_steps=100_000, per_device_train_batch_size=a.prompts * a.G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=a.G, max_completion_length=a.max_new, temperature=1.0,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, beta=a.beta, epsilon=0.2,
        epsilon_high=0.28, loss_type="dapo", scale_rewards="group", num_iterations=1,
        reward_weights=list(REWARD_WEIGHTS.values()), seed=a.seed, dataloader_num_workers=0, disable_dropout=True)


def reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first training time at which `curve` reaches `target` accuracy."""
    return next((t for t, acc in curve if acc >= target), None)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for side, curve in curves.items():
        ax.plot([t for t, _ in curve], [acc for _, acc in curve], marker="o", label=side)
    ax.set(xlabel="training wall time (s), evaluation excluded", ylabel="held-out accuracy (greedy)",
           title="GRPO from the same SFT checkpoint")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", default="models:/default@sft", help="SFT checkpoint: a directory or models:/ URI")
    p.add_argument("--budget", type=float, default=240.0, help="training seconds per side")
    p.add_argument("--eval-every", type=float, default=30.0)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.02)
    p.add_argument("--limit", type=int, default=4000,
                   help="RL prompts used (data/rl_prompts.jsonl, the first N): more than either side trains on "
                   "in the budget; r1flow's pass-rate probes of all of them count in its clock")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default="r1flow,trl")
    p.add_argument("--out", type=Path, default=Path("runs/bench/grpo_time_to_accuracy"))
    p.add_argument("--retire-solved", action=argparse.BooleanOptionalAction, default=False,
                   help="r1flow retires prompts whose G samples all came out correct (RLConfig.retire_solved)")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                   help="both sides: r1flow's model.mixed_precision, TRL's bf16 (torch.autocast either way)")
    return p


def main() -> None:
    a = parser().parse_args()
    torch.set_num_threads(a.threads)
    start = a.start if Path(a.start).is_dir() else local_model(a.start)
    rows = [json.loads(x) for x in Path("data/rl_prompts.jsonl").read_text().splitlines()][: a.limit]
    heldout = [json.loads(x) for x in Path("data/eval.jsonl").read_text().splitlines()]

    def score(model) -> float:
        from components.modeling.models import load_tokenizer

        was = model.training
        model.eval()
        with torch.inference_mode():
            acc = evaluate(model, load_tokenizer(start), heldout, max_new_tokens=a.max_new, batch_size=250).metrics
        model.train(was)
        return acc["accuracy"]

    from components.modeling.models import load_model

    start_acc = score(load_model(start))
    print(f"start {start}: held-out accuracy {start_acc:.3f}; budget {a.budget:.0f} s per side, threads {a.threads}")
    curves = {}
    for side in a.order.split(","):
        torch.set_num_threads(a.threads)
        print(f"  {side}:")
        clock = Clock(a.budget, a.eval_every, score)
        (r1flow_side if side == "r1flow" else trl_side)(start, rows, a, clock)
        curves[side] = [(0.0, start_acc)] + clock.curve
        print(f"  {side}: {clock.steps} optimizer steps in {clock.elapsed():.0f} s of training")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "curves.json").write_text(json.dumps(curves, indent=2))
    plot(curves, a.out / "time_to_accuracy.png")
    print("\n  t (s)  " + "  ".join(f"{s:>8}" for s in curves))
    for i in range(max(len(c) for c in curves.values())):
        print("  " + "  ".join(f"{c[i][0]:6.0f} {c[i][1]:.3f}" if i < len(c) else " " * 12 for c in curves.values()))
    if {"r1flow", "trl"} <= curves.keys():
        target = curves["trl"][-1][1]
        t = reach(curves["r1flow"], target)
        budget = curves["trl"][-1][0]
        ratio = f"{t / budget:.2f}" if t is not None else "never (within its budget)"
        print(f"\nTRL's final accuracy {target:.3f} after {budget:.0f} s; r1flow reaches it after "
              f"{'-' if t is None else f'{t:.0f}'} s: time ratio {ratio} (target <= 0.5)")
    print(f"curves and plot in {a.out}")


def local_model(uri: str) -> str:
    from tasks.settings import configure
    from tasks.tracking import download_model

    root = configure()
    return str(download_model(uri, root / ".r1flow" / "downloads", "start"))


if __name__ == "__main__":
    main()
