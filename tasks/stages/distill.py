"""Distillation (seed §2.3 step 5, R1 §2.4): a smaller student learns from the final model.

Three stages: `student_base` makes a smaller model (`student_base.arch`) with the teacher's
tokenizer and pretrains it on the same corpus: a fresh Llama, or (`init: prune`) one cut out of
the teacher's base by the importance of its parts (Minitron); `distill` trains it on the teacher's
verified generations (sequence-level SFT and/or token-level KD on the teacher's logits);
`distill_control` trains the same student base on the curated cold-start data alone, so the gain
due to distillation is measured rather than assumed. The students are plain HF directories,
evaluated like every model.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config import ArchConfig, TrainConfig
from components.io import write_json
from components.training.configs import DistillConfig
from tasks.common import finish, load_policy, publish_rows, read_rows
from tasks.console import say
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage

STUDENT_ARCH = dict(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)


class StudentBaseConfig(TrainConfig):
    """Pretraining of the student: the base stage's settings plus the student's (smaller) shape."""

    arch: ArchConfig = Field(default_factory=lambda: ArchConfig(**STUDENT_ARCH),
                             description="Shape of the student (vocabulary and positions come from the teacher).")
    init: Literal["scratch", "prune"] = Field(
        "scratch", description="scratch: a freshly initialised Llama; prune: the teacher's base cut to `arch` by the "
        "importance of its channels, heads, neurons and layers (components/modeling/pruning.py; whole heads, so "
        "arch.hidden_size / arch.num_heads must be the teacher's head width), then trained `steps` as from scratch.")
    calibration_rows: int = Field(256, ge=1, description="init: prune — pretraining documents the importances "
                                  "are measured on (one forward pass of the teacher).")


@stage(config=StudentBaseConfig, defaults=dict(steps=1500, batch_size=64, lr=3e-3, warmup_steps=50),
       inputs=("teacher",), reads=("pretrain.jsonl",), evaluate=True, distributed=True)
def student_base(ctx: StageContext, teacher: ModelRef):
    """Pretrain a smaller model (`student_base.arch`), fresh or cut out of the teacher's base, on the corpus."""
    from components.modeling.models import load_tokenizer
    from components.modeling.student import build_student, parameter_count
    from components.training.sft import run_sft

    cfg, m = ctx.cfg, ctx.model
    rows = read_rows(ctx, "pretrain.jsonl", "text", cfg.source, cfg.limit)
    tokenizer = load_tokenizer(teacher.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    if cfg.init == "prune":
        model = _pruned(ctx, teacher, tokenizer, rows)
    else:
        model = build_student(teacher.uri, cfg.arch, tokenizer, ctx.seed)
    ctx.log({"parameters": parameter_count(model)}, 0)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer)


def _pruned(ctx: StageContext, teacher: ModelRef, tokenizer, rows: list[dict]):
    """The teacher cut to `arch`, its parts ranked on the first `calibration_rows` documents."""
    from components.modeling.models import load_model
    from components.modeling.pruning import prune
    from components.training.sft import collate, encode_rows

    cfg, m = ctx.cfg, ctx.model
    teacher_model = load_model(teacher.uri, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code)
    encoded = encode_rows(tokenizer, rows[:cfg.calibration_rows], cfg.max_length, cfg.completion_only_loss)
    batches = [collate(encoded[i:i + cfg.batch_size], tokenizer.pad_token_id)
               for i in range(0, len(encoded), cfg.batch_size)]
    model, cut = prune(teacher_model, cfg.arch, [(b["input_ids"], b["attention_mask"]) for b in batches])
    say(f"  {ctx.name}: pruned the teacher to {cut.summary()}")
    return model


@stage(config=DistillConfig, inputs=("teacher", "student"), passthrough="student", reads=("rl_prompts.jsonl",), evaluate=True)
def distill(ctx: StageContext, teacher: ModelRef, student: ModelRef):
    """Train the student on the teacher's verified generations: SFT and/or KD on the teacher's logits."""
    from components.evaluation.speed import generation_speed
    from components.modeling.student import parameter_count, student_model
    from components.training.distill import run_distill, teacher_samples

    cfg = ctx.cfg
    rows = read_rows(ctx, "rl_prompts.jsonl", "prompt_answer", cfg.samples.source, cfg.samples.limit)
    teacher_model, tokenizer = load_policy(ctx, teacher)
    model = student_model(teacher_model, tokenizer, student_dir=student.uri, dtype=ctx.model.dtype)
    kept, stats = teacher_samples(teacher_model, tokenizer, rows, cfg, ctx.seed, progress=ctx.progress)
    ctx.log({f"samples/{k}": v for k, v in stats.as_metrics().items()}, 0)
    publish_rows(ctx, kept, "teacher_samples")
    run_distill(model, teacher_model, tokenizer, kept, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log,
                progress=ctx.progress)
    sizes = {"teacher_parameters": parameter_count(teacher_model), "student_parameters": parameter_count(model)}
    prompts = [r["prompt"] for r in rows[:64]]
    speed = {f"{who}_tokens_per_s": generation_speed(m, tokenizer, prompts, n=4, repeats=3).tokens_per_s
             for who, m in (("teacher", teacher_model), ("student", model))}
    summary = {**sizes, "parameter_ratio": sizes["student_parameters"] / sizes["teacher_parameters"], **speed}
    ctx.log(summary, cfg.steps)
    write_json(ctx.out_dir / "summary.json", summary)
    return finish(ctx, model, tokenizer)


@stage(config=TrainConfig, defaults=dict(steps=150, lr=5e-4, warmup_steps=10), inputs=("student",),
       passthrough="student", reads=("cold_start.jsonl",), evaluate=True, distributed=True)
def distill_control(ctx: StageContext, student: ModelRef):
    """The control: the same student base fine-tuned on the curated cold-start data alone (no teacher)."""
    from components.training.sft import run_sft

    cfg = ctx.cfg
    rows = read_rows(ctx, "cold_start.jsonl", "sft", cfg.source, cfg.limit)
    model, tokenizer = load_policy(ctx, student, cfg.finetune, cfg.lora)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer, base=student, merge=cfg.merge_lora)
