"""Cold start (seed §2.3.1): SFT on a small curated set of worked solutions in the reasoning format."""
from __future__ import annotations

from components.config import TrainConfig
from tasks.common import finish, load_policy, read_rows
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage


@stage(config=TrainConfig, defaults=dict(steps=150, lr=5e-4), inputs=("policy",), passthrough="policy",
       reads=("cold_start.jsonl",), evaluate=True, distributed=True)
def cold_start(ctx: StageContext, policy: ModelRef):
    """SFT on the curated worked solutions; prompt tokens are masked from the loss."""
    from components.training.sft import run_sft

    cfg = ctx.cfg
    rows = read_rows(ctx, "cold_start.jsonl", "sft", cfg.source, cfg.limit)
    model, tokenizer = load_policy(ctx, policy, cfg.finetune, cfg.lora)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer, base=policy, merge=cfg.merge_lora)
