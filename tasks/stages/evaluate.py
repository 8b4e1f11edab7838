"""Held-out evaluation of a model: greedy pass@1 accuracy (± s.e.), format rate, length, sample table."""
from __future__ import annotations

import hashlib
import json

import mlflow

from components.config import EvalConfig
from components.evaluation.accuracy import evaluate as evaluate_model
from components.io import write_json
from tasks import tracking
from tasks.common import load_policy, read_rows
from tasks.refs import EvalRef, ModelRef
from tasks.stage import StageContext, stage

EVAL_CODE = ("components/evaluation", "components/generation", "components/rewards", "components/algorithms",
             "components/data", "components/modeling")


@stage(config=EvalConfig, inputs=("model",), reads=("eval.jsonl",), code=EVAL_CODE)
def evaluate(ctx: StageContext, model: ModelRef):
    """Greedy completions of the held-out problems, scored by the recipe's correctness reward."""
    cfg = ctx.cfg
    rows = read_rows(ctx, "eval.jsonl", "prompt_answer", cfg.source, cfg.limit)
    policy, tokenizer = load_policy(ctx, model)
    result = evaluate_model(policy, tokenizer, rows, max_new_tokens=cfg.max_new_tokens, rollout=cfg.rollout,
                            correctness=cfg.correctness, system_prompt=cfg.system_prompt, table_rows=cfg.table_rows,
                            progress=ctx.progress)
    ctx.log(result.metrics, 0)
    mlflow.set_tag("r1flow.evaluated_stage", model.stage)
    tracking.log_table(result.table, f"samples/{model.stage}.json")
    write_json(ctx.out_dir / "metrics.json", result.metrics)
    digest = hashlib.sha256(json.dumps(result.metrics, sort_keys=True).encode()).hexdigest()
    return EvalRef(model=model, metrics=result.metrics, run_id=ctx.run_id, digest=digest)
