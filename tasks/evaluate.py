"""Held-out evaluation of a stage's model: accuracy (± s.e.), format rate, length, samples."""
from __future__ import annotations

import json

import mlflow

from components.evaluation.accuracy import evaluate as evaluate_model
from components.io import atomic_dir
from components.modeling.models import load_model, load_tokenizer
from tasks import tracking
from tasks.common import read_rows
from tasks.refs import EvalRef
from tasks.stage import StageContext, register


@register("evaluate", reads=("eval.jsonl",), code=(
    "components/evaluation", "components/generation", "components/rewards", "components/algorithms",
    "components/data", "components/modeling"))
def evaluate(ctx: StageContext) -> EvalRef:
    cfg, m = ctx.cfg, ctx.recipe.model
    rows = read_rows(ctx, "eval.jsonl", "prompt_answer", cfg.source, cfg.limit)
    model = load_model(ctx.upstream.uri, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code)
    tokenizer = load_tokenizer(ctx.upstream.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    result = evaluate_model(model, tokenizer, rows, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.rollout.batch_size,
                            correctness=cfg.correctness, system_prompt=cfg.system_prompt, table_rows=cfg.table_rows)
    ctx.log(result.metrics, 0)
    mlflow.set_tag("r1flow.evaluated_stage", ctx.upstream.stage)
    tracking.log_table(result.table, f"samples/{ctx.upstream.stage}.json")
    with atomic_dir(ctx.out_dir) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return EvalRef(model=ctx.upstream, metrics=result.metrics, run_id=ctx.run_id)
