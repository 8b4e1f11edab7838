"""Distillation (seed §2.3 step 5, R1 §2.4): a smaller student learns from the final model.

Three stages: `student_base` pretrains a smaller Llama (`student_base.arch`) on the same corpus
with the teacher's tokenizer; `distill` trains it on the teacher's verified generations
(sequence-level SFT and/or token-level KD on the teacher's logits); `distill_control` trains the
same student base on the curated cold-start data alone, so the gain due to distillation is
measured rather than assumed. The students are plain HF directories, evaluated like every model.
"""
from __future__ import annotations

from pydantic import Field

from components.config import ArchConfig, TrainConfig
from components.io import write_json
from components.training.configs import DistillConfig
from tasks.common import finish, load_policy, publish_rows, read_rows
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage

STUDENT_ARCH = dict(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)


class StudentBaseConfig(TrainConfig):
    """Pretraining of the student: the base stage's settings plus the student's (smaller) shape."""

    arch: ArchConfig = Field(default_factory=lambda: ArchConfig(**STUDENT_ARCH),
                             description="Shape of the student (vocabulary and positions come from the teacher).")


@stage(config=StudentBaseConfig, defaults=dict(steps=1500, batch_size=64, lr=3e-3, warmup_steps=50),
       inputs=("teacher",), reads=("pretrain.jsonl",), evaluate=True, distributed=True)
def student_base(ctx: StageContext, teacher: ModelRef):
    """Pretrain a smaller Llama (`student_base.arch`) with the teacher's tokenizer on the pretraining corpus."""
    from components.modeling.models import load_tokenizer
    from components.modeling.student import build_student, parameter_count
    from components.training.sft import run_sft

    cfg, m = ctx.cfg, ctx.model
    rows = read_rows(ctx, "pretrain.jsonl", "text", cfg.source, cfg.limit)
    tokenizer = load_tokenizer(teacher.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    model = build_student(teacher.uri, cfg.arch, tokenizer, ctx.seed)
    ctx.log({"parameters": parameter_count(model)}, 0)
    run_sft(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    return finish(ctx, model, tokenizer)


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
