"""The R1 reasoning stages (seed §2.3): cold-start RL, rejection sampling + SFT, reasoning RL (GRPO)."""
from __future__ import annotations

from dataclasses import replace

import mlflow

from components.io import atomic_dir, write_jsonl
from components.training.grpo import run_grpo
from components.training.rejection import dataset_digest, rejection_sample
from components.training.sft import run_sft
from tasks import tracking
from tasks.common import finish, load_upstream, read_rows
from tasks.refs import DatasetRef
from tasks.stage import StageContext, register

RL_CODE = ("components/training", "components/generation", "components/rewards", "components/algorithms",
           "components/modeling", "components/data")


def _grpo(ctx: StageContext, data_file: str):
    cfg = ctx.cfg
    rows = read_rows(ctx, data_file, "prompt_answer", cfg.source, cfg.limit)
    policy, tokenizer = load_upstream(ctx, cfg.finetune, cfg.lora)
    # reference=None: run_grpo freezes a copy of the starting policy (or, for adapters, the
    # same model with its adapters off) as the KL reference.
    table = lambda rows, step: tracking.log_table(rows, f"samples/{ctx.name}-step{step:05d}.json")  # noqa: E731
    run_grpo(policy, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.recipe.run.seed, log=ctx.log, table=table)
    return finish(ctx, policy, tokenizer, merge=cfg.merge_lora)


@register("cold_start_rl", reads=("cold_start.jsonl",), code=RL_CODE)
def cold_start_rl(ctx: StageContext):
    """A short GRPO run on the curated cold-start prompts with format + accuracy rewards."""
    return _grpo(ctx, "cold_start.jsonl")


@register("reasoning_rl", reads=("rl_prompts.jsonl",), code=RL_CODE)
def reasoning_rl(ctx: StageContext):
    """GRPO with rule-based rewards on the RL prompt set."""
    return _grpo(ctx, "rl_prompts.jsonl")


@register("rejection_sampling", reads=("rl_prompts.jsonl",), code=RL_CODE)
def rejection_sampling(ctx: StageContext):
    """K samples per prompt from the current policy; keep verified, well-formed, unique ones (≤ k per prompt).

    The model passes through unchanged; the accepted samples ride along as a content-addressed
    dataset that the `sft` stage trains on.
    """
    cfg = ctx.cfg
    rows = read_rows(ctx, "rl_prompts.jsonl", "prompt_answer", cfg.source, cfg.limit)
    model, tokenizer = load_upstream(ctx)
    kept, stats = rejection_sample(model, tokenizer, rows, cfg, seed=ctx.recipe.run.seed)
    ctx.log(stats.as_metrics(), 0)
    if not kept:
        raise ValueError(f"rejection_sampling: no sample passed the filters ({stats.as_metrics()}); "
                         "raise samples_per_prompt or temperature, or train the upstream stage longer")
    digest = dataset_digest(kept)
    name = f"samples-{digest[:16]}.jsonl"
    with atomic_dir(ctx.out_dir) as tmp:
        write_jsonl(tmp / name, kept)
    path = ctx.out_dir / name
    tracking.log_dataset(str(path), digest, name="rejection_samples", context="derived", rows=kept)
    mlflow.log_artifact(str(path), "derived")
    return replace(ctx.upstream, stage=ctx.name, run_id=ctx.run_id,
                   dataset=DatasetRef(uri=str(path), digest=digest, rows=len(kept)))


@register("sft", reads=(), code=("components/modeling", "components/training", "components/algorithms"))
def sft(ctx: StageContext):
    """SFT on the data derived by the previous stage (rejection samples), or on `sft.source`."""
    cfg = ctx.cfg
    derived = ctx.upstream.dataset
    if cfg.source is None and derived is None:
        raise ValueError("sft: needs rejection_sampling before it in run.stages, or sft.source")
    source = cfg.source or derived.uri
    rows = read_rows(ctx, "derived", "sft", source, cfg.limit)
    model, tokenizer = load_upstream(ctx, cfg.finetune, cfg.lora)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.recipe.run.seed, log=ctx.log)
    return finish(ctx, model, tokenizer, merge=cfg.merge_lora)
