"""Where the default recipe's hot loops spend their time, operator by operator (torch.profiler).

    .venv/bin/python bench/profile_loops.py runs/stages/sft-<key>/model [RECIPE] [--set ...] [--compile]

On one model directory (the recipe's `sft` model is what GRPO starts from), three loops with the
recipe's own settings (`base` and `reasoning_rl` of RECIPE, default configs/default.yaml; `--set`
overrides them as `r1flow run` does) and data (`data.dir`):

  pretraining step  one packed micro-batch of `base.batch_size` pretraining documents (rows of
                    `base.max_length` tokens): forward, backward, the recipe's `base.optimizer` (the
                    base stage's step); with Muon, also its optimizer step alone, stacked (r1flow's
                    StackedMuon) against torch.optim.Muon's matrix by matrix, alternating, and the ratio
                    (StackedMuon iterates in float32 on a CPU without native bfloat16, torch's in
                    bfloat16 everywhere);
  rollout           `prompts_per_step` RL prompts x `group_size` samples through the stage's
                    rollout engine (one GRPO iteration's sampling);
  reward scoring    those samples scored with the recipe's rewards (`reasoning_rl.rewards`), and
                    its share of the rollout's time: the most that scoring beside sampling could save;
  GRPO pass         `minibatch_size` of those rows as one training minibatch: the frozen
                    reference's no-grad forward (beta > 0), then the stage's loss, forward and
                    backward (components/training/grpo.py); then the policy's part of it with
                    each group's prompt computed once (`reasoning_rl.share_prompts`) and
                    without, side by side, and the ratio.

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
    p.add_argument("recipe", nargs="?", default="configs/default.yaml", help="recipe whose settings and data to use")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per loop (the median is reported)")
    p.add_argument("--top", type=int, default=8, help="operators listed per loop")
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
    print(f"\n{name}: median {1000 * statistics.median(times):.3g} ms over {repeats} runs")
    for op, ms, share in ops:
        print(f"  {share:6.1%}  {ms:8.1f} ms  {op}")
    return {"median_s": statistics.median(times), "ops": ops}


def pretrain_step(model, optimizer, batch) -> None:
    """One step of the base stage: the packed batch's token-mean NLL, backward, the optimizer's step."""
    from components.training.sft import sft_loss_fn

    loss, _ = sft_loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def side_by_side_sharing(model, mb, rl, repeats: int) -> dict:
    """The GRPO pass (the policy's loss, forward + backward) with each group's prompt computed
    once (`reasoning_rl.share_prompts`) and without, in alternating runs; the gradients' largest
    difference shows they are the same computation up to rounding."""
    from components.training.grpo import minibatch_loss

    def grads(share: bool) -> list:
        model.zero_grad(set_to_none=True)
        loss, _ = minibatch_loss(model, mb, rl.model_copy(update={"share_prompts": share}))
        loss.backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    model.train()
    times = {False: [], True: []}
    for _ in range(repeats + 1):  # the first round warms up
        for share in (False, True):
            t = time.perf_counter()
            grads(share)
            times[share].append(time.perf_counter() - t)
    diff = max(float((a - b).abs().max()) for a, b in zip(grads(False), grads(True)))
    plain, shared = (statistics.median(times[k][1:]) for k in (False, True))
    model.zero_grad(set_to_none=True)
    print(f"\nGRPO pass, each group's prompt once (share_prompts) against every row whole, alternating "
          f"runs: {1000 * shared:.3g} ms against {1000 * plain:.3g} ms (median of {repeats}), "
          f"{plain / shared:.2f}x; largest gradient difference {diff:.1e}")
    return {"plain_s": plain, "shared_s": shared, "ratio": plain / shared, "max_grad_diff": diff}


def side_by_side_muon(model, lr: float, repeats: int) -> dict:
    """Muon's step over the model's hidden matrices (random gradients) as StackedMuon takes it and as
    torch.optim.Muon does, in alternating runs of 20 steps each."""
    import torch

    from components.training.optimizers import StackedMuon, hidden_matrices, newton_schulz_dtype

    hidden = [p for p in model.parameters() if id(p) in hidden_matrices({"model": model})]
    for p in hidden:
        p.grad = torch.randn_like(p)
    kwargs = {"lr": lr, "adjust_lr_fn": "match_rms_adamw"}
    sides = {"stacked": StackedMuon(hidden, **kwargs), "per matrix": torch.optim.Muon(hidden, **kwargs)}
    times = {name: [] for name in sides}
    for _ in range(repeats + 1):  # the first round warms up
        for name, opt in sides.items():
            t = time.perf_counter()
            for _ in range(20):
                opt.step()
            times[name].append((time.perf_counter() - t) / 20)
    stacked, single = (statistics.median(times[k][1:]) for k in ("stacked", "per matrix"))
    shapes = len({tuple(p.shape) for p in hidden})
    dtype = str(newton_schulz_dtype(hidden[0].device.type)).removeprefix("torch.")  # torch.optim.Muon's: bfloat16
    print(f"\nMuon's step over the {len(hidden)} hidden matrices ({shapes} shapes), stacked (StackedMuon, in {dtype}) "
          f"against torch.optim.Muon's matrix by matrix (in bfloat16), alternating: {1000 * stacked:.3g} ms against "
          f"{1000 * single:.3g} ms (median of {repeats}), {single / stacked:.2f}x")
    return {"stacked_s": stacked, "per_matrix_s": single, "ratio": single / stacked, "stacked_dtype": dtype}


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    from tasks.recipe import load_recipe_or_exit

    recipe = load_recipe_or_exit(a.recipe, a.overrides)
    base, rl, data = recipe.base, recipe.reasoning_rl, Path(recipe.data.dir)

    import torch

    from components.data.loaders import DataError, load_records
    from components.modeling.models import ModelLoadError, load_model, load_tokenizer
    from components.rewards import RewardCombiner
    from components.training.grpo import (encode_prompts, make_rollout_engine, minibatch_loss, reference_logprobs,
                                          sampling_params, score)
    from components.training.optimizers import build_optimizer
    from components.training.rollout_batch import RolloutBatch
    from components.training.sft import encode, pack

    torch.set_num_threads(a.threads)
    batches_wanted = max(a.compile_steps, 1) if a.compile else 1
    try:
        model, tok = load_model(a.model), load_tokenizer(a.model)
        docs = load_records(data / "pretrain.jsonl", "text", limit=base.batch_size * batches_wanted)
        prompts = load_records(data / "rl_prompts.jsonl", "prompt_answer", limit=rl.prompts_per_step)
    except (DataError, ModelLoadError) as e:
        raise SystemExit(str(e)) from None
    out = {}

    width = base.max_length
    batches = [pack([encode(tok, row, width, base.completion_only_loss) for row in docs[s : s + base.batch_size]], width,
                    tok.pad_token_id)
               for s in range(0, len(docs), base.batch_size)]
    learner = copy.deepcopy(model).train()  # its steps must not change the model the rollout samples from
    optimizer = build_optimizer(base.optimizer, [{"params": list(learner.parameters())}], {"model": learner},
                                base.lr, base.weight_decay)
    print(f"pretraining batch: {base.batch_size} documents packed into {tuple(batches[0]['input_ids'].shape)} tokens")
    out["pretrain"] = measure("pretraining step", lambda: pretrain_step(learner, optimizer, batches[0]),
                              a.repeats, a.top)
    if base.optimizer == "muon":
        out["muon"] = side_by_side_muon(learner, base.lr, a.repeats)
    del learner, optimizer

    ids = encode_prompts(tok, prompts, rl.system_prompt)
    # in this process only: the profiler sees one process (rollout.workers' helpers are bench/rollout.py's side)
    one = rl.rollout.model_copy(update={"workers": 1})
    engine = make_rollout_engine(one, model, tok, rl.prompts_per_step * rl.group_size)
    params = sampling_params(rl, seed=0)
    out["rollout"] = measure("rollout", lambda: engine.generate(ids, params), a.repeats, a.top)
    rollout = engine.generate(ids, params)
    print(f"  ({rollout.num_generated_tokens} tokens sampled per rollout)")

    combiner = RewardCombiner.of(rl.rewards, rl.reward_timeout_s)
    out["score"] = measure(f"reward scoring ({len(rollout)} samples: {', '.join(combiner.names)})",
                           lambda: score(combiner, rollout, prompts), a.repeats, a.top)
    out["score"]["share_of_rollout"] = out["score"]["median_s"] / out["rollout"]["median_s"]
    print(f"  ({out['score']['share_of_rollout']:.1%} of the rollout's time: the most that scoring beside "
          "sampling could save)")

    rows = list(range(min(rl.minibatch_size, len(rollout.completion_ids))))
    mb = RolloutBatch.from_rollout(rollout, rows, torch.linspace(-1, 1, len(rows)), tok.pad_token_id, model.device)
    reference = copy.deepcopy(model).requires_grad_(False).eval()

    def grpo_pass():
        if rl.beta > 0:
            mb.ref_logp = reference_logprobs(model, reference, mb, rl.temperature, rl.minibatch_size)
        model.train()
        loss, _ = minibatch_loss(model, mb, rl)
        loss.backward()
        model.zero_grad(set_to_none=True)

    what = "the reference's no-grad forward, then " if rl.beta > 0 else ""
    out["grpo"] = measure(f"GRPO pass ({what}the policy's forward + backward)", grpo_pass, a.repeats, a.top)
    out["share_prompts"] = side_by_side_sharing(model, mb, rl, a.repeats)

    if a.compile:
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = True  # a cold compile, as on a fresh machine
        sides = {}
        for name in ("eager", "compiled"):
            m = copy.deepcopy(model).train()
            if name == "compiled":
                m.forward = torch.compile(m.forward)
            optimizer = build_optimizer(base.optimizer, [{"params": list(m.parameters())}], {"model": m}, base.lr,
                                        base.weight_decay)
            steps = []
            for batch in batches:
                t = time.perf_counter()
                pretrain_step(m, optimizer, batch)
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
