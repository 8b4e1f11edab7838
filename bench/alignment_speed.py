"""Seconds per iteration of each alignment method at the default recipe's size.

Run by hand (not a test), alone on the machine (it is a torch job):

    flock /tmp/r1flow-heavy.lock .venv/bin/python bench/alignment_speed.py [--threads 2] [--steps 4]

The default recipe's model shape (Llama, hidden 128, 4 layers, MLP 512, ~1M parameters, fp32,
random init), the project's tokenizer (BPE, 96 tokens) trained on arithmetic chat turns, and
realistic batches: 32 preference pairs / trajectories per step (worked solution vs bare answer,
~30-60 tokens each); online methods sample 64-token completions from arithmetic prompts and are
scored by a fake reward model (share of digits; a real reward model adds its own forward).
The first iteration (warm-up) is dropped; the median of the rest is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from components.config import ArchConfig, LoraConfig, RewardItem  # noqa: E402
from components.data import arithmetic as ar  # noqa: E402
from components.data.curate import chat_text  # noqa: E402
from components.modeling.models import add_lora, build_tiny_llama  # noqa: E402
from components.modeling.tokenizer import train_tokenizer  # noqa: E402
from components.training.alignment import get_alignment_method  # noqa: E402

ARCH = ArchConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, vocab_size=96)


def digit_share(prompts, completions):
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def data(problems):
    pairs = [{"prompt": p.expression, "chosen": p.solution(), "rejected": f"<answer>{p.answer}</answer>"}
             for p in problems]
    prompts = [{"prompt": p.expression, "answer": str(p.answer)} for p in problems]
    trajectories = [{"prompt": p.expression, "completion": p.solution(), "reward": float(i % 2)}
                    for i, p in enumerate(problems)]
    return {"preference": pairs, "prompts": prompts, "trajectory": trajectories}


CASES = {  # name: (method, config overrides, LoRA?)
    "dpo": ("dpo", dict(batch_size=32, lr=1e-5), False),
    "orpo": ("orpo", dict(batch_size=32, lr=1e-5), False),
    "oreo": ("oreo", dict(batch_size=32, lr=1e-5), False),
    "ppo": ("ppo", dict(prompts_per_step=32, samples_per_prompt=4, max_new_tokens=64, ppo_epochs=2,
                        minibatch_size=64), False),
    "grpo_rm": ("grpo_rm", dict(prompts_per_step=16, group_size=8, max_new_tokens=64, minibatch_size=128,
                                rewards=[RewardItem(name="exact_int"), RewardItem(name="format", weight=0.2),
                                         RewardItem(name="reward_model")]), False),
    "trpo": ("trpo", dict(prompts_per_step=8, samples_per_prompt=8, max_new_tokens=64), False),
    "trpo_lora": ("trpo", dict(prompts_per_step=8, samples_per_prompt=8, max_new_tokens=64), True),
}


def bench(name, tokenizer, rows, steps):
    method_name, overrides, lora = CASES[name]
    method = get_alignment_method(method_name)
    cfg = method.config(steps=steps, ckpt_every=10_000, **overrides)
    policy = build_tiny_llama(ARCH, tokenizer, seed=0)
    if lora:
        policy = add_lora(policy, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    times, tokens = [], []
    log = lambda m, s: (times.append(m["time/iteration_s"]), tokens.append(m.get("tokens", 0.0)))  # noqa: E731
    with tempfile.TemporaryDirectory() as ckpt:
        t0 = time.perf_counter()
        method.run(policy, tokenizer, rows[method.data], cfg, ckpt, 0, reward_fn=digit_share, log=log)
        total = time.perf_counter() - t0
    params = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return statistics.median(times[1:]), total, statistics.mean(tokens[1:]), params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", nargs="*", default=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problems = ar.generate(0, 2000, [1, 2, 3, 4], heldout=False)
    tokenizer = train_tokenizer([chat_text(p.expression, p.solution()) for p in problems], vocab_size=96)
    rows = data(problems[:1000])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} iterations (first dropped)")
    print("| method | s / iteration | tokens sampled / iteration | trainable params | run (s) |")
    print("|---|---|---|---|---|")
    for name in args.only:
        per_it, total, toks, params = bench(name, tokenizer, rows, args.steps)
        print(f"| {name} | {per_it:.3f} | {toks:.0f} | {params:,} | {total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
