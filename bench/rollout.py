"""Rollout throughput: r1flow's TransformersEngine vs a plain `model.generate` loop, and the engine
with `--workers` processes (`rollout.workers`: helper processes of threads / workers threads each
decode whole batches beside this one; `--workers 1` leaves that side out).

Run by hand (not a test):

    .venv/bin/python bench/rollout.py [--threads 2] [--repeats 5] [--workers 2]

A ~2M-parameter Llama (hidden 192, 5 layers, random init) with the project's tokenizer;
64 chat-templated arithmetic prompts x G=8 samples, max_new_tokens=48, temperature 1.0.
Both sides use a KV cache, the same batches (256 rows = 32 prompts x 8), the same process;
runs alternate; the median and the best of `--repeats` runs are reported. Tokens are generated
completion tokens (up to and including EOS).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from components.generation import SamplingParams, TransformersEngine  # noqa: E402
from components.modeling.tokenizer import train_tokenizer  # noqa: E402


def make_problems(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        k = rng.randint(2, 4)
        nums = [str(rng.randint(0, 19)) for _ in range(k)]
        ops = [rng.choice("+-*") for _ in range(k - 1)]
        out.append("".join(a + b for a, b in zip(nums, ops + [""])))
    return out


def build(seed: int = 0):
    rng = random.Random(seed)
    corpus = [f"{p}=? <think>{p}</think><answer>{rng.randint(0, 99)}</answer>" for p in make_problems(rng, 200)]
    tok = train_tokenizer(corpus)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=5,
        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in make_problems(rng, 64)
    ]
    return model, tok, prompts


def run_generate_loop(model, tok, prompts, G, max_new, batch_rows, seed):
    """Plain HF baseline: model.generate over the same prompts, `batch_rows // G` prompts per call."""
    per_call = max(1, batch_rows // G)
    eos = tok.eos_token_id
    n_tokens = 0
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(prompts), per_call):
            enc = tok(prompts[s : s + per_call], add_special_tokens=False, padding=True, return_tensors="pt")
            out = model.generate(
                **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                num_return_sequences=G, pad_token_id=tok.pad_token_id, eos_token_id=eos, use_cache=True,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            is_eos = new == eos
            # tokens up to and including the first EOS; all of them when there is none
            first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full_like(new[:, 0], new.shape[1]))
            n_tokens += int(first.sum())
    return n_tokens, time.perf_counter() - start


def run_engine(model, tok, prompts, G, max_new, batch_rows, seed, engine=None):
    engine = engine or TransformersEngine(model, tok, batch_size=batch_rows)
    r = engine.generate(prompts, SamplingParams(n=G, temperature=1.0, max_new_tokens=max_new, seed=seed))
    return r.num_generated_tokens, r.wall_time_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="processes of the third side (1: no third side)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tok, prompts = build()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {n_params / 1e6:.2f}M params, vocab {len(tok)}, {len(prompts)} prompts x G={args.G}, "
          f"max_new_tokens={args.max_new_tokens}, batch {args.batch_rows} rows, threads {args.threads}")

    # warm-up (allocator, kernels) on one full batch
    warm = prompts[: max(1, args.batch_rows // args.G)]
    run_generate_loop(model, tok, warm, args.G, args.max_new_tokens, args.batch_rows, 0)
    run_engine(model, tok, warm, args.G, args.max_new_tokens, args.batch_rows, 0)
    pooled = None
    if args.workers > 1:  # made once, as a GRPO run does; its helpers start before the timed runs
        pooled = TransformersEngine(model, tok, batch_size=args.batch_rows, workers=args.workers)
        if not pooled._pool.wait_ready(timeout=300):
            sys.exit("bench/rollout.py: the rollout workers did not start within 300 s")
        run_engine(model, tok, warm, args.G, args.max_new_tokens, args.batch_rows, 0, pooled)

    base, ours, multi = [], [], []
    for rep in range(args.repeats):
        n, t = run_generate_loop(model, tok, prompts, args.G, args.max_new_tokens, args.batch_rows, rep)
        base.append(n / t)
        print(f"  [{rep}] model.generate loop : {n:6d} tokens in {t:6.2f}s = {n / t:8.1f} tok/s")
        n, t = run_engine(model, tok, prompts, args.G, args.max_new_tokens, args.batch_rows, rep)
        ours.append(n / t)
        print(f"  [{rep}] r1flow engine       : {n:6d} tokens in {t:6.2f}s = {n / t:8.1f} tok/s")
        if pooled is not None:
            n, t = run_engine(model, tok, prompts, args.G, args.max_new_tokens, args.batch_rows, rep, pooled)
            multi.append(n / t)
            print(f"  [{rep}] r1flow, {args.workers} processes: {n:6d} tokens in {t:6.2f}s = {n / t:8.1f} tok/s")
    b, o = statistics.median(base), statistics.median(ours)
    bb, ob = max(base), max(ours)
    print(f"model.generate loop: median {b:8.1f} tok/s | best {bb:8.1f} tok/s  ({args.repeats} runs)")
    print(f"r1flow engine      : median {o:8.1f} tok/s | best {ob:8.1f} tok/s  ({args.repeats} runs)")
    print(f"speed-up           : median {o / b:.2f}x | best-vs-best {ob / bb:.2f}x")
    if pooled is not None:
        m, mb = statistics.median(multi), max(multi)
        print(f"r1flow, {args.workers} processes: median {m:8.1f} tok/s | best {mb:8.1f} tok/s  ({args.repeats} runs)")
        print(f"processes vs one  : median {m / o:.2f}x | best-vs-best {mb / ob:.2f}x "
              f"(vs model.generate: median {m / b:.2f}x)")
        pooled.close()
    print("(best-of-N is the robust figure on a shared CPU; medians swing with other load)")

if __name__ == "__main__":
    main()
