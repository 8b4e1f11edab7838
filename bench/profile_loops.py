"""Where the default recipe's hot loops spend their time, operator by operator (torch.profiler).

    .venv/bin/python bench/profile_loops.py runs/stages/sft-<key>/model [--threads 2] [--compile]

On one model directory (the recipe's `sft` model is what GRPO starts from), three loops as the
default recipe runs them:

  pretraining step  one packed micro-batch of 64 pretraining documents (rows of 128 tokens):
                    forward, backward, AdamW (the base stage repeats it 1,500 times);
  rollout           64 RL prompts x G = 8 samples of up to 64 new tokens through the rollout
                    engine in batches of 256 rows (one GRPO iteration's sampling);
  GRPO pass         256 of those rows as one training minibatch: the policy's forward and
                    backward (length buckets), then the frozen reference's no-grad forward.

For each: the median wall time of `--repeats` runs and the operators with the most self CPU
time in one more, profiled, run. `--compile` also runs `--compile-steps` pretraining steps, each
on its own batch (the packed row count varies, as in the base stage), eagerly and with the
model's forward under `torch.compile` from a cold compiler cache: the compiled side's first step
(compilation), its median step after, and the number of steps it needs to pay its compile back.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (safetensors + tokenizer)")
    p.add_argument("--data", default="data", help="folder with pretrain.jsonl and rl_prompts.jsonl")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per loop (the median is reported)")
    p.add_argument("--top", type=int, default=8, help="operators listed per loop")
    p.add_argument("--docs", type=int, default=64, help="pretraining documents per micro-batch (recipe: 64)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per rollout (recipe: 64, x G = 8)")
    p.add_argument("--compile", action="store_true", help="also time the pretraining step under torch.compile")
    p.add_argument("--compile-steps", type=int, default=60)
    return p


def top_ops(prof, k: int) -> list[tuple[str, float, float]]:
    """(operator, self CPU ms, share of the total self CPU time) of the `k` costliest operators."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1000, e.self_cpu_time_total / total) for e in events[:k]]


def measure(name: str, fn, repeats: int, k: int) -> dict:
    """Median wall time of `repeats` calls of `fn`, then one profiled call; prints both."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = top_ops(prof, k)
    print(f"\n{name}: median {1000 * statistics.median(times):.0f} ms over {repeats} runs")
    for op, ms, share in ops:
        print(f"  {share:6.1%}  {ms:8.1f} ms  {op}")
    return {"median_s": statistics.median(times), "ops": ops}


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    import torch

    from components.data.loaders import DataError, load_records
    from components.data.prompts import render_prompt
    from components.generation import SamplingParams, TransformersEngine
    from components.modeling.models import ModelLoadError, load_model, load_tokenizer
    from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logprobs
    from components.training.sft import encode, pack, sft_loss_fn

    torch.set_num_threads(a.threads)
    try:
        model, tok = load_model(a.model), load_tokenizer(a.model)
        docs = load_records(Path(a.data) / "pretrain.jsonl", "text",
                            limit=a.docs * (max(a.compile_steps, 1) if a.compile else 1))
        prompts = load_records(Path(a.data) / "rl_prompts.jsonl", "prompt", limit=a.prompts)
    except (DataError, ModelLoadError) as e:
        raise SystemExit(str(e)) from None
    out = {}

    batches = [pack([encode(tok, row, 128) for row in docs[s : s + a.docs]], 128, tok.pad_token_id)
               for s in range(0, len(docs), a.docs)]
    batch = batches[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def pretrain_step(m=model, batch=batch):
        loss, _ = sft_loss_fn(m, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    print(f"pretraining batch: {a.docs} documents packed into {tuple(batch['input_ids'].shape)} tokens")
    out["pretrain"] = measure("pretraining step", pretrain_step, a.repeats, a.top)

    ids = tok([render_prompt(tok, row["prompt"]) for row in prompts], add_special_tokens=False)["input_ids"]
    engine = TransformersEngine(model, tok, batch_size=256)
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=64, seed=0)
    out["rollout"] = measure("rollout", lambda: engine.generate(ids, params), a.repeats, a.top)
    rollout = engine.generate(ids, params)
    print(f"  ({rollout.num_generated_tokens} tokens sampled per rollout)")

    rows = list(range(min(256, len(rollout.completion_ids))))
    adv = torch.linspace(-1, 1, len(rows))
    mb = RolloutBatch.from_rollout(rollout, rows, adv, tok.pad_token_id, model.device)
    reference = copy.deepcopy(model).requires_grad_(False).eval()

    def grpo_pass():
        model.train()
        logp, _ = completion_logprobs(model, mb, 1.0, with_entropy=True)
        (-(logp * mb.advantages[:, None]).sum() / mb.completion_mask.sum()).backward()
        model.zero_grad(set_to_none=True)
        batch_logprobs(reference, mb, 1.0, 256)

    out["grpo"] = measure("GRPO pass (policy forward + backward, reference forward)", grpo_pass, a.repeats, a.top)

    if a.compile:
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = True  # a cold compile, as on a fresh machine
        sides = {}
        for name in ("eager", "compiled"):
            m = copy.deepcopy(model).train()
            if name == "compiled":
                m.forward = torch.compile(m.forward)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
            steps = []
            for b in batches:
                t = time.perf_counter()
                pretrain_step(m, b)
                steps.append(time.perf_counter() - t)
            sides[name] = steps
        eager, comp = sides["eager"], sides["compiled"]
        saving = statistics.median(eager[1:]) - statistics.median(comp[1:])
        payback = (sum(comp) - sum(eager)) / saving if saving > 0 else float("inf")
        print(f"\ntorch.compile, {len(batches)} pretraining steps on their own batches: eager {sum(eager):.1f} s "
              f"(median step {1000 * statistics.median(eager[1:]):.0f} ms), compiled {sum(comp):.1f} s (first "
              f"step {comp[0]:.1f} s, median step {1000 * statistics.median(comp[1:]):.0f} ms); pays back after "
              f"~{payback:.0f} more steps")
        out["compile"] = {"eager_s": sum(eager), "compiled_s": sum(comp), "payback_steps": payback}
    return out


if __name__ == "__main__":
    main()
