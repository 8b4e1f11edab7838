"""The supervised stages: pretraining the tiny base model and cold-start SFT (seed §2.3.1)."""
from __future__ import annotations

from components.modeling.models import build_tiny_llama
from components.modeling.tokenizer import train_tokenizer
from components.training.sft import run_sft
from tasks.common import finish, load_upstream, read_rows
from tasks.stage import StageContext, register

TRAIN_CODE = ("components/modeling", "components/training", "components/algorithms", "components/data")


@register("base", reads=("pretrain.jsonl",), code=TRAIN_CODE)
def base(ctx: StageContext):
    """Pretrain a tiny Llama and its tokenizer on the generated corpus, from scratch."""
    cfg, arch, seed = ctx.cfg, ctx.recipe.model.arch, ctx.recipe.run.seed
    rows = read_rows(ctx, "pretrain.jsonl", "text", cfg.source, cfg.limit)
    tokenizer = train_tokenizer((r["text"] for r in rows), vocab_size=arch.vocab_size)
    model = build_tiny_llama(arch, tokenizer, seed)
    ctx.log({"parameters": sum(p.numel() for p in model.parameters())}, 0)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, seed, log=ctx.log)
    return finish(ctx, model, tokenizer)


@register("cold_start", reads=("cold_start.jsonl",), code=TRAIN_CODE)
def cold_start(ctx: StageContext):
    """SFT on the small curated set of worked solutions in the reasoning format."""
    cfg = ctx.cfg
    rows = read_rows(ctx, "cold_start.jsonl", "sft", cfg.source, cfg.limit)
    model, tokenizer = load_upstream(ctx, cfg.finetune, cfg.lora)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.recipe.run.seed, log=ctx.log)
    return finish(ctx, model, tokenizer, merge=cfg.merge_lora)
