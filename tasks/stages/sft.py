"""SFT on derived data (seed §2.3.3): fine-tune the policy on its own accepted samples.

As in R1's SFT stage, the reasoning samples are mixed with non-reasoning chat data (the curated
`general.jsonl`) unless `sft.general` is off.
"""
from __future__ import annotations

from pydantic import Field

from components.config import TrainConfig
from tasks.common import finish, load_policy, read_dataset, read_rows
from tasks.refs import DatasetRef, ModelRef
from tasks.stage import StageContext, stage


class SFTConfig(TrainConfig):
    general: bool = Field(True, description="Mix the curated non-reasoning chat rows (general.jsonl) into the "
                          "training rows, as R1's SFT stage does (§2.3.3); turn off for your own data.")


@stage(config=SFTConfig, defaults=dict(steps=200, lr=3e-4), inputs=("policy", "dataset"), optional=("dataset",),
       passthrough="policy", reads=("general.jsonl",), evaluate=True, distributed=True)
def sft(ctx: StageContext, policy: ModelRef, dataset: DatasetRef | None):
    """SFT on `dataset` (the rejection samples) or `sft.source`, mixed with the general chat rows."""
    from components.training.sft import run_sft

    cfg = ctx.cfg
    if cfg.source is not None:
        rows = read_rows(ctx, "derived", "sft", cfg.source, cfg.limit, name="sft_source")
    elif dataset is not None:
        rows = read_dataset(ctx, dataset, cfg.limit)
    else:
        raise ValueError("sft: needs a dataset (run rejection_sampling before it) or sft.source")
    if cfg.general:
        rows = rows + read_rows(ctx, "general.jsonl", "sft", name="general")
    model, tokenizer = load_policy(ctx, policy, cfg.finetune, cfg.lora)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer, base=policy, merge=cfg.merge_lora)
