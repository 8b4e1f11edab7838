"""Reward models (seed §2.1): an outcome RM from preferences, and a process RM from Monte-Carlo step labels.

Both are a scalar head on the policy's backbone (`components/modeling/reward_models.py` fixes the
scoring convention the test-time verifiers use) and both pass a quality gate before they are
registered: a reward model that cannot tell the held-out preferences apart stops the pipeline
with one message, and nothing downstream runs on it.
"""
from __future__ import annotations

from contextlib import closing

from components.training.configs import PRMConfig, RewardModelConfig
from tasks.common import finish, publish_rows, read_rows
from tasks.console import say
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage

RANKINGS = {"bradley_terry": ("preferences.jsonl", "preference"), "plackett_luce": ("rankings.jsonl", "ranking")}


class QualityGateError(ValueError):
    """A trained model missed its recipe's quality threshold; it is not registered."""


def _backbone(ctx: StageContext, policy: ModelRef, kind: str, cfg):
    from components.modeling.models import load_tokenizer
    from components.modeling.reward_models import load_reward_model

    m = ctx.model
    tokenizer = load_tokenizer(policy.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    model = load_reward_model(policy.uri, kind, pad_token_id=tokenizer.pad_token_id, finetune=cfg.finetune,
                              lora=cfg.lora, dtype=m.dtype, revision=m.revision,
                              trust_remote_code=m.trust_remote_code, seed=ctx.seed)
    return model, tokenizer


def _gate(ctx: StageContext, gate, step: int) -> None:
    ctx.log({"gate/passed": float(gate.passed)}, step)
    say(f"  {ctx.name}: {gate.message}")
    if not gate.passed:
        raise QualityGateError(f"{ctx.name}: {gate.message}; the model is not registered and nothing "
                               "downstream of it runs")


@stage(config=RewardModelConfig, defaults=dict(steps=60, batch_size=32, lr=1e-3), inputs=("policy",),
       reads=("preferences.jsonl", "rankings.jsonl"))
def reward_model(ctx: StageContext, policy: ModelRef):
    """Outcome reward model: Bradley–Terry on pairs or Plackett–Luce on rankings, gated on held-out accuracy."""
    from components.training.reward_model import reward_model_gate, run_reward_model

    cfg = ctx.cfg
    file, schema = RANKINGS[cfg.objective]
    rows = read_rows(ctx, file, schema, cfg.source, cfg.limit)
    heldout = (read_rows(ctx, file, schema, cfg.heldout_source, name="heldout", split="test")
               if cfg.heldout_source else None)
    model, tokenizer = _backbone(ctx, policy, "outcome", cfg)
    result = run_reward_model(model, tokenizer, rows, cfg, ctx.ckpt_dir, ctx.seed, heldout_rows=heldout,
                              log=ctx.log, progress=ctx.progress)
    _gate(ctx, reward_model_gate(result.heldout, cfg), cfg.steps)
    return finish(ctx, model, tokenizer, kind="sequence_classifier")


@stage(config=PRMConfig, defaults=dict(limit=128, steps=60, batch_size=16), inputs=("policy",),
       reads=("rl_prompts.jsonl",))
def process_reward_model(ctx: StageContext, policy: ModelRef):
    """Process reward model: steps labelled by the policy's own rollouts (Math-Shepherd), a step verifier."""
    from components.generation import make_engine
    from components.modeling.models import load_model
    from components.training.prm import prm_gate, run_prm
    from components.training.prm_labels import label_steps

    cfg, m = ctx.cfg, ctx.model
    rows = read_rows(ctx, "rl_prompts.jsonl", "prompt_answer", cfg.source, cfg.limit)
    sampler = load_model(policy.uri, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code)
    model, tokenizer = _backbone(ctx, policy, "process", cfg)
    with closing(make_engine(cfg.rollout.backend, sampler, tokenizer, **cfg.rollout.engine_kwargs())) as engine:
        labelled, stats = label_steps(engine, tokenizer, rows, cfg, ctx.seed)
    ctx.log(stats.as_metrics(), 0)
    publish_rows(ctx, labelled, "prm_labels", schema="prm")
    del sampler
    result = run_prm(model, tokenizer, labelled, cfg, ctx.ckpt_dir, ctx.seed, log=ctx.log, progress=ctx.progress)
    _gate(ctx, prm_gate(result.heldout, cfg), cfg.steps)
    return finish(ctx, model, tokenizer, kind="token_classifier")
