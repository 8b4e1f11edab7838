"""GRPO throughput and reward: r1flow's `run_grpo` vs TRL's `GRPOTrainer`, same everything.

Run by hand (not a test):

    .venv/bin/python bench/grpo_vs_trl.py [--steps 60] [--threads 1] [--order r1flow,r1flow-all,trl]

Three sides by default: r1flow as the recipes run it (zero-variance groups dropped), r1flow-all
(every group trained on, the same work as TRL), and TRL. Defaults reproduce the README figure.

On a machine whose cores are shared with other jobs use --threads 1: with 2 OpenMP threads on
2 oversubscribed cores every op waits for a descheduled thread, and both sides ran ~200x slower
(and erratically) when measured.

Set-up shared by both sides: the project's BPE tokenizer; a Llama of hidden 128 / 4 layers built
from config and warmed up with a short SFT on worked level-1/2 arithmetic solutions (so rewards
are neither all 0 nor all 1; saved to a temp dir, which both sides load and TRL needs for its
reference model when beta > 0); chat-templated `components.data.arithmetic` prompts; rewards
exact_int (weight 1) + format (weight 0.2) from `components.rewards`; the same G, prompts per
step, max_new_tokens, temperature, optimizer steps, lr (constant), beta, clip range (0.2/0.28),
token-mean loss. One generation batch feeds exactly one optimizer step on both sides.

Reported per side: optimizer steps/s (wall time of the training call), generated tokens/s
(while generating, and over the whole run), peak RSS during the run (sampled; the process is
shared, so the second run starts from the first one's leftovers: the delta is reported too),
the mean training reward of the last iterations, and a held-out evaluation of the trained
policy (same engine, prompts and seed for both: 128 held-out prompts x 8 samples) next to the
start model's. Both runs happen one after the other in one
process.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402

from components.config import ArchConfig, RewardItem, RLConfig, TrainConfig  # noqa: E402
from components.data import arithmetic as ar  # noqa: E402
from components.data.curate import chat_text  # noqa: E402
from components.data.prompts import render_prompt  # noqa: E402
from components.generation import SamplingParams, make_engine  # noqa: E402
from components.modeling.models import build_tiny_llama  # noqa: E402
from components.modeling.tokenizer import train_tokenizer  # noqa: E402
from components.rewards import exact_int, format_reward  # noqa: E402
from components.training.grpo import run_grpo  # noqa: E402
from components.training.sft import run_sft  # noqa: E402

LEVELS = [1, 2]
REWARD_WEIGHTS = {"exact_int": 1.0, "format": 0.2}


# --------------------------------------------------------------------------- shared set-up


def build_start_model(out_dir: Path, warmup_steps: int, seed: int = 0) -> None:
    """Tokenizer + a hidden-128 / 4-layer Llama, SFT-warmed on worked solutions, saved to out_dir."""
    train = ar.generate(seed, 3000, LEVELS, heldout=False)
    tok = train_tokenizer([chat_text(p.expression, p.solution()) for p in train], vocab_size=96)
    arch = ArchConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, vocab_size=96,
                      max_position_embeddings=128)
    model = build_tiny_llama(arch, tok, seed)
    rows = [{"messages": [{"role": "user", "content": p.expression},
                          {"role": "assistant", "content": p.solution()}]} for p in train]
    cfg = TrainConfig(steps=warmup_steps, batch_size=32, lr=3e-3, warmup_steps=10, max_length=64,
                      ckpt_every=10_000, log_every=10_000)
    with tempfile.TemporaryDirectory() as ckpt:
        run_sft(model, tok, rows, cfg, ckpt, seed=seed)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def problems(seed: int, n: int, heldout: bool) -> list[dict]:
    return [{"prompt": p.expression, "answer": str(p.answer)} for p in ar.generate(seed, n, LEVELS, heldout=heldout)]


def evaluate(model, tok, rows: list[dict], n: int = 8, max_new: int = 32) -> dict:
    """Mean combined reward and accuracy of `n` samples per held-out prompt (fixed seed)."""
    engine = make_engine("transformers", model, tok)
    prompts = [render_prompt(tok, r["prompt"]) for r in rows]
    out = engine.generate(prompts, SamplingParams(n=n, max_new_tokens=max_new, seed=12345))
    answers = [rows[i]["answer"] for i in out.prompt_index]
    correct = exact_int(out.texts, answer=answers)
    fmt = format_reward(out.texts)
    total = [REWARD_WEIGHTS["exact_int"] * c + REWARD_WEIGHTS["format"] * f for c, f in zip(correct, fmt)]
    return {"reward": sum(total) / len(total), "accuracy": sum(correct) / len(correct), "format": sum(fmt) / len(fmt)}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.proc, self.start = psutil.Process(), psutil.Process().memory_info().rss
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


# --------------------------------------------------------------------------- the two sides


class TimedEngine:
    """Counts generated tokens and generation time of the r1flow rollout engine."""

    def __init__(self, engine):
        self.engine, self.tokens, self.seconds = engine, 0, 0.0

    def generate(self, prompts, params, progress=False):
        out = self.engine.generate(prompts, params, progress)
        self.tokens += out.num_generated_tokens
        self.seconds += out.wall_time_s
        return out

    def update_weights(self, model):
        self.engine.update_weights(model)


def run_r1flow(model_dir: Path, rows, a, drop_flat: bool = True) -> dict:
    model, tok = load(model_dir)
    cfg = RLConfig(skip_zero_variance=drop_flat, steps=a.steps, prompts_per_step=a.prompts, group_size=a.G, max_new_tokens=a.max_new,
                   temperature=1.0, ppo_epochs=1, minibatch_size=a.prompts * a.G, grad_accum=1, lr=a.lr,
                   schedule="constant", beta=a.beta, clip_low=0.2, clip_high=0.28, loss_agg="token-mean",
                   rewards=[RewardItem(name=k, weight=w) for k, w in REWARD_WEIGHTS.items()],
                   ckpt_every=10_000, log_every=1)
    engine = TimedEngine(make_engine("transformers", model, tok, batch_size=a.prompts * a.G))
    logs: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as ckpt, PeakRSS() as mem:
        t0 = time.perf_counter()
        run_grpo(model, tok, rows, cfg, ckpt, seed=a.seed, engine=engine,
                 log=lambda m, s: logs.__setitem__(s, dict(m)))
        seconds = time.perf_counter() - t0
    last = [logs[s]["reward/mean"] for s in sorted(logs)[-a.last:]]
    gen = sum(m["time/generate_frac"] * m["time/iteration_s"] for m in logs.values())
    opt = sum(m["time/optimize_frac"] * m["time/iteration_s"] for m in logs.values())
    return dict(model=model, tok=tok, seconds=seconds, gen_tokens=engine.tokens, gen_seconds=engine.seconds,
                trained_tokens=sum(m["tokens_trained"] for m in logs.values()),
                rss=mem, train_reward=sum(last) / len(last), split=(gen, opt),
                kept=sum(m["groups_kept_frac"] for m in logs.values()) / len(logs))


def trl_settings(a) -> dict:
    """GRPOConfig's arguments: the r1flow sides' settings in TRL's terms (prompts x G sequences
    per rollout batch, one optimizer step each, `a.steps` of them)."""
    return dict(
        bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=a.steps, per_device_train_batch_size=a.prompts * a.G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=a.G, max_completion_length=a.max_new, temperature=1.0,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, beta=a.beta, epsilon=0.2,
        epsilon_high=0.28, loss_type="dapo", scale_rewards="group", num_iterations=1,
        reward_weights=list(REWARD_WEIGHTS.values()), seed=a.seed, dataloader_num_workers=0, disable_dropout=True)


def run_trl(model_dir: Path, rows, a) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    _, tok = load(model_dir)

    def exact_int_reward(completions, answer, **_):
        return exact_int(completions, answer=answer)

    def format_reward_fn(completions, **_):
        return format_reward(completions)

    data = Dataset.from_list([{"prompt": render_prompt(tok, r["prompt"]), "answer": r["answer"]} for r in rows])
    out_dir = tempfile.mkdtemp(prefix="trl-grpo-")
    args = GRPOConfig(output_dir=out_dir, **trl_settings(a))
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[exact_int_reward, format_reward_fn], args=args,
                          train_dataset=data, processing_class=tok)
    counter = {"tokens": 0, "seconds": 0.0}
    generate = trainer.model.generate
    eos = tok.eos_token_id

    def timed_generate(*args_, **kwargs):
        t = time.perf_counter()
        out = generate(*args_, **kwargs)
        counter["seconds"] += time.perf_counter() - t
        new = out[:, kwargs["input_ids"].shape[1]:]
        is_eos = new == eos
        first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full_like(new[:, 0], new.shape[1]))
        counter["tokens"] += int(first.sum())
        return out

    trainer.model.generate = timed_generate
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    last = rewards[-a.last:]
    return dict(model=trainer.model, tok=tok, seconds=seconds, gen_tokens=counter["tokens"],
                gen_seconds=counter["seconds"], trained_tokens=counter["tokens"],  # trains on every group
                rss=mem, train_reward=sum(last) / len(last), split=(counter["seconds"], None), kept=None)


# --------------------------------------------------------------------------- report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (= rollout iterations)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--G", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)  # 2e-4 degrades both sides below the start model
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--warmup-sft", type=int, default=300, help="SFT steps that make the start model")
    p.add_argument("--threads", type=int, default=1)  # 2 threads on 2 shared cores: erratic, see above
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--last", type=int, default=5, help="training reward = mean of the last N steps")
    p.add_argument("--order", default="r1flow,r1flow-all,trl",
                   help="sides, in this order; r1flow-all trains on every group like TRL (no zero-variance dropping)")
    p.add_argument("--model-dir", type=Path, help="reuse (or create) the warmed-up start model here")
    return p


def main() -> None:
    a = parser().parse_args()
    torch.set_num_threads(a.threads)

    model_dir = a.model_dir or Path(tempfile.mkdtemp(prefix="grpo-bench-model-"))
    if not (model_dir / "config.json").exists():
        t = time.perf_counter()
        build_start_model(model_dir, a.warmup_sft)
        print(f"start model: {a.warmup_sft} SFT steps in {time.perf_counter() - t:.0f}s -> {model_dir}")
    rows, heldout = problems(a.seed, 512, heldout=False), problems(a.seed + 1, 128, heldout=True)
    start_model, start_tok = load(model_dir)
    start_eval = evaluate(start_model, start_tok, heldout)
    print(f"params: {sum(q.numel() for q in start_model.parameters()):,}  start model held-out:",
          {k: round(v, 3) for k, v in start_eval.items()})
    print(f"steps={a.steps} prompts/step={a.prompts} G={a.G} max_new={a.max_new} lr={a.lr} beta={a.beta} "
          f"threads={a.threads} cores={os.cpu_count()} load avg={os.getloadavg()[0]:.1f}")

    results = {}
    for side in a.order.split(","):
        torch.set_num_threads(a.threads)  # the same for both, whatever a library set before
        run = {"r1flow": run_r1flow, "r1flow-all": lambda *x: run_r1flow(*x, drop_flat=False), "trl": run_trl}[side]
        results[side] = run(model_dir, rows, a)
        if torch.get_num_threads() != a.threads:
            print(f"warning: {side} left torch with {torch.get_num_threads()} threads, not {a.threads}")
        results[side]["eval"] = evaluate(results[side]["model"], results[side]["tok"], heldout)

    print(f"\n{'':11}{'steps/s':>9}{'gen tok/s':>11}{'tok/s all':>11}{'trained/s':>10}{'gen s':>8}{'opt s':>8}"
          f"{'peak RSS':>10}{'RSS +':>8}{'train R':>9}{'eval R':>8}{'eval acc':>9}")
    for side, r in results.items():
        gen, opt = r["split"]
        print(f"{side:11}{a.steps / r['seconds']:9.3f}{r['gen_tokens'] / r['gen_seconds']:11.0f}"
              f"{r['gen_tokens'] / r['seconds']:11.0f}{r['trained_tokens'] / r['seconds']:10.0f}"
              f"{gen:8.1f}{'' if opt is None else f'{opt:.1f}':>8}"
              f"{r['rss'].peak / 2**20:9.0f}M{(r['rss'].peak - r['rss'].start) / 2**20:7.0f}M"
              f"{r['train_reward']:9.3f}{r['eval']['reward']:8.3f}{r['eval']['accuracy']:9.3f}")
    print(f"{'start':11}{'':88}{start_eval['reward']:8.3f}{start_eval['accuracy']:9.3f}")
    t = results.get("trl")
    for side in [s for s in results if s != "trl"] if t else []:
        r = results[side]
        gen_ratio = (r["gen_tokens"] / r["gen_seconds"]) / (t["gen_tokens"] / t["gen_seconds"])
        trained_ratio = (r["trained_tokens"] / r["seconds"]) / (t["trained_tokens"] / t["seconds"])
        print(f"{side} / TRL: optimizer steps/s x{t['seconds'] / r['seconds']:.2f}, "
              f"generation tokens/s x{gen_ratio:.2f}, trained tokens/s x{trained_ratio:.2f}, "
              f"eval reward {r['eval']['reward']:.3f} vs {t['eval']['reward']:.3f}; "
              f"trained on {r['kept']:.0%} of groups on average")
    print(f"process peak RSS (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}M")


if __name__ == "__main__":
    main()
