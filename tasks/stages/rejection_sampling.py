"""Rejection sampling (seed §2.3.3): K samples per prompt; keep verified, well-formed, distinct ones."""
from __future__ import annotations

from components.config import RejectionConfig
from tasks.common import load_policy, publish_rows, read_rows
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage



@stage(config=RejectionConfig, inputs=("policy",), reads=("rl_prompts.jsonl",))
def rejection_sampling(ctx: StageContext, policy: ModelRef):
    """A content-addressed dataset of the policy's accepted samples (at most k per prompt)."""
    from components.training.rejection import rejection_sample

    cfg = ctx.cfg
    rows = read_rows(ctx, "rl_prompts.jsonl", "prompt_answer", cfg.source, cfg.limit)
    model, tokenizer = load_policy(ctx, policy)
    kept, stats = rejection_sample(model, tokenizer, rows, cfg, seed=ctx.seed, progress=ctx.progress)
    ctx.log(stats.as_metrics(), 0)
    if not kept:
        raise ValueError(f"rejection_sampling: no sample passed the filters ({stats.as_metrics()}); "
                         "raise samples_per_prompt or temperature, or train the upstream stage longer")
    return publish_rows(ctx, kept, "rejection_samples", schema="sft")
