"""Reasoning RL with GRPO and rule-based rewards (seed §2.2.1, §2.3.2), and its cold-start variant."""
from __future__ import annotations

from components.config import RLConfig
from tasks import tracking
from tasks.common import finish, load_policy, read_rows
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage


def grpo_stage(ctx: StageContext, policy: ModelRef, data_file: str) -> ModelRef:
    from components.training.grpo import run_grpo

    cfg = ctx.cfg
    rows = read_rows(ctx, data_file, "prompt_answer", cfg.source, cfg.limit)
    model, tokenizer = load_policy(ctx, policy, cfg.finetune, cfg.lora)
    # reference=None: run_grpo freezes a copy of the starting policy (or, for adapters, the
    # same model with its adapters off) as the KL reference.
    table = lambda rows, step: tracking.log_table(rows, f"samples/{ctx.name}-step{step:05d}.json")  # noqa: E731
    run_grpo(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, table=table, progress=ctx.progress)
    return finish(ctx, model, tokenizer, base=policy, merge=cfg.merge_lora)


@stage(config=RLConfig, inputs=("policy",), passthrough="policy", reads=("cold_start.jsonl",),
       evaluate=True)
def cold_start_rl(ctx: StageContext, policy: ModelRef):
    """A short GRPO run on the curated cold-start prompts (format + accuracy rewards)."""
    return grpo_stage(ctx, policy, "cold_start.jsonl")


@stage(config=RLConfig, inputs=("policy",), passthrough="policy", reads=("rl_prompts.jsonl",),
       evaluate=True)
def reasoning_rl(ctx: StageContext, policy: ModelRef):
    """GRPO with rule-based rewards (correctness, format) on the RL prompt set."""
    return grpo_stage(ctx, policy, "rl_prompts.jsonl")
