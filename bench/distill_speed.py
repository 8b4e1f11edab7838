"""What distillation costs on the default recipe's model: step time, teacher sampling, speed-up.

Run by hand (not a test), under the shared lock on a shared machine:

    flock /tmp/r1flow-heavy.lock .venv/bin/python bench/distill_speed.py [--threads 2]

Set-up: the project's BPE tokenizer (vocab 96, trained on worked arithmetic solutions); the
default recipe's Llama (hidden 128, 4 layers, 4 heads, intermediate 512) built from config and
SFT-warmed on worked level 1-4 solutions (`--teacher-sft-steps`) so that it writes realistic
solutions some of which verify; a student of `--student` shape (hidden,layers,intermediate)
built from the teacher's config with the teacher's tokenizer.

Reported: parameter counts and ratio; the teacher's verified-sample funnel and wall time for
`--prompts` prompts x `--k` samples; seconds per distillation step at `--batch-size` for SFT
only, KD only and the mixed loss (median over the steps after 2); then generation tokens/s of
teacher and student (median of 5 after a warm-up; same prompts, seed and batch).

Measured (2 threads, machine otherwise idle; contended runs were 2-10x slower and erratic):
teacher 1,057,664 / student (96, 3 layers, 256) 338,400 params = 0.320; teacher sampling of
512 prompts x 4 in 2.1 s (21k tok/s); step at batch 32 on ~25 / ~31-token sequences: SFT
0.035 / 0.047 s, KD 0.072 / 0.101 s, mixed 0.067 / 0.116 s (min 0.054 / 0.080 s); generation
teacher 17.7k tok/s, student 25.4k tok/s.
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

from components.config import ArchConfig, RejectionConfig, TrainConfig  # noqa: E402
from components.data import arithmetic as ar  # noqa: E402
from components.data.curate import chat_text  # noqa: E402
from components.evaluation.speed import generation_speed  # noqa: E402
from components.modeling.models import build_tiny_llama  # noqa: E402
from components.modeling.student import build_student, check_student_size, parameter_count  # noqa: E402
from components.modeling.tokenizer import train_tokenizer  # noqa: E402
from components.training.distill import DistillConfig, run_distill, teacher_samples  # noqa: E402
from components.training.sft import encode, run_sft  # noqa: E402

LEVELS = [1, 2, 3, 4]


def sft_rows(problems) -> list[dict]:
    return [{"messages": [{"role": "user", "content": p.expression}, {"role": "assistant", "content": p.solution()}],
             "prompt": p.expression, "answer": str(p.answer)} for p in problems]


def build_teacher(tok, sft_steps: int, seed: int, cache: str | None):
    """The warmed teacher; with `cache`, loaded from / saved to that directory (tokenizer alongside)."""
    if cache and Path(cache, "model.safetensors").exists():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(cache)
    arch = ArchConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, vocab_size=96)
    teacher = build_tiny_llama(arch, tok, seed)
    cfg = TrainConfig(steps=sft_steps, batch_size=32, lr=3e-3, warmup_steps=10, max_length=128,
                      ckpt_every=10_000, log_every=10_000)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ckpt:
        run_sft(teacher, tok, sft_rows(ar.generate(seed, 4000, LEVELS, heldout=False)), cfg, ckpt, seed=seed)
    print(f"teacher SFT warm-up: {sft_steps} steps in {time.perf_counter() - t0:.1f} s")
    if cache:
        teacher.save_pretrained(cache)
    return teacher


def step_seconds(student, teacher, tok, rows, cfg: DistillConfig) -> tuple[float, float]:
    """(median, min) seconds of the distillation steps after the first two."""
    times: list[float] = []
    with tempfile.TemporaryDirectory() as ckpt:
        run_distill(student, teacher, tok, rows, cfg, ckpt, seed=0,
                    log=lambda m, s: times.append(m["time/iteration_s"]))
    return statistics.median(times[2:]), min(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher-sft-steps", type=int, default=300)
    ap.add_argument("--teacher-cache", default=None, help="reuse (or save) the warmed teacher in this directory")
    ap.add_argument("--student", default="96,3,256", help="hidden,layers,intermediate")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=22)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = ar.generate(0, 3000, LEVELS, heldout=False)
    tok = train_tokenizer([chat_text(p.expression, p.solution()) for p in train], vocab_size=96)
    teacher = build_teacher(tok, args.teacher_sft_steps, seed=0, cache=args.teacher_cache)
    hidden, layers, inter = (int(x) for x in args.student.split(","))
    student = build_student(teacher, ArchConfig(hidden_size=hidden, num_layers=layers, num_heads=4,
                                                intermediate_size=inter), tok, seed=1)
    t_n, s_n = parameter_count(teacher), parameter_count(student)
    print(f"vocab {len(tok)}; teacher {t_n:,} params; student {s_n:,} params; "
          f"ratio {check_student_size(s_n, t_n):.3f}")

    prompts = [{"prompt": p.expression, "answer": str(p.answer)} for p in ar.generate(7, args.prompts, LEVELS, False)]
    samples = RejectionConfig(samples_per_prompt=args.k, keep_per_prompt=2, max_new_tokens=64, max_tokens=64)
    t0 = time.perf_counter()
    kept, stats = teacher_samples(teacher, tok, prompts, DistillConfig(samples=samples), seed=0)
    print(f"teacher samples: {args.prompts} prompts x {args.k} in {time.perf_counter() - t0:.1f} s "
          f"({stats.tokens / stats.seconds:.0f} tok/s); kept {stats.kept} "
          f"(acceptance {stats.acceptance_rate:.2f}, prompts with any {stats.prompts_with_any}); "
          f"correct {stats.correct}, well formed {stats.well_formed}")

    for set_name, rows in (("teacher's kept samples", kept), ("curated level 1-4 solutions", sft_rows(train[:512]))):
        lengths = [len(encode(tok, r, 128)[0]) for r in rows]
        print(f"rows: {set_name}: {len(rows)}, mean length {statistics.mean(lengths):.1f} tokens")
        for label, kw in (("sft only", dict(kd_weight=0.0)), ("kd only", dict(sft_weight=0.0)),
                          ("mixed sft+kd", {})):
            cfg = DistillConfig(steps=args.steps, batch_size=args.batch_size, log_every=1, ckpt_every=10_000, **kw)
            med, low = step_seconds(student, teacher, tok, rows, cfg)
            print(f"  distill step ({label}, batch {args.batch_size}): median {med:.3f} s, min {low:.3f} s")
    # after those steps the student writes teacher-like completions, so the two workloads compare
    bench_prompts = [r["prompt"] for r in prompts[:64]]
    for name, model in (("teacher", teacher), ("student", student)):
        sp = generation_speed(model, tok, bench_prompts, n=8, max_new_tokens=64, seed=3, repeats=5)
        print(f"{name} generation: {sp.tokens_per_s:.0f} tok/s (runs {[round(r) for r in sp.runs]}, "
              f"{sp.tokens} tokens / {sp.sequences} seqs = {sp.tokens / sp.sequences:.1f} per seq, {sp.seconds:.2f} s)")


if __name__ == "__main__":
    main()
