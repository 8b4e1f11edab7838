"""Pretraining of the tiny base model (the default task's starting point; skipped for a named model)."""
from __future__ import annotations

from components.config import TrainConfig
from components.modeling.tokenizer import train_tokenizer
from tasks.common import finish, read_rows
from tasks.stage import StageContext, stage



@stage(config=TrainConfig, defaults=dict(steps=1500, batch_size=64, lr=2e-3), reads=("pretrain.jsonl",), evaluate=True,
       distributed=True)
def base(ctx: StageContext):
    """Train a BPE tokenizer and pretrain a tiny Llama (`model.arch`) on the generated corpus."""
    from components.modeling.models import build_tiny_llama
    from components.training.sft import run_sft

    cfg, arch = ctx.cfg, ctx.model.arch
    rows = read_rows(ctx, "pretrain.jsonl", "text", cfg.source, cfg.limit)
    tokenizer = train_tokenizer((r["text"] for r in rows), vocab_size=arch.vocab_size)
    model = build_tiny_llama(arch, tokenizer, ctx.seed)
    ctx.log({"parameters": sum(p.numel() for p in model.parameters())}, 0)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer)
