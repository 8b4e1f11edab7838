"""Held-out evaluation of a model: greedy pass@1 accuracy (± s.e.), format rate, length, sample table,
and each problem's outcome (`per_problem.json`; with `house_rules`, also whether each preference
prompt's reply follows the rules), from which the pipeline computes a stage's paired gains over the
model it started from."""
from __future__ import annotations

import hashlib
import json

import mlflow

from components.config import EvalConfig
from components.io import dataset_digest, write_json
from tasks import tracking
from tasks.common import load_policy, read_rows
from tasks.refs import EvalRef, ModelRef
from tasks.stage import StageContext, stage



@stage(config=EvalConfig, inputs=("model",), reads=("eval.jsonl", "pref_eval.jsonl"))
def evaluate(ctx: StageContext, model: ModelRef):
    """Greedy completions of the held-out problems (correctness) and preference prompts (house rules)."""
    from components.evaluation.accuracy import evaluate as evaluate_model
    from components.evaluation.preference import evaluate_preference

    cfg = ctx.cfg
    rows = read_rows(ctx, "eval.jsonl", "prompt_answer", cfg.source, cfg.limit, split="test")
    policy, tokenizer = load_policy(ctx, model)
    result = evaluate_model(policy, tokenizer, rows, max_new_tokens=cfg.max_new_tokens, rollout=cfg.rollout,
                            correctness=cfg.correctness, system_prompt=cfg.system_prompt, table_rows=cfg.table_rows,
                            progress=ctx.progress)
    metrics = dict(result.metrics)
    outcomes = {"eval_set": dataset_digest(rows), "correct": result.correct}
    if cfg.house_rules:
        pref_rows = read_rows(ctx, "pref_eval.jsonl", "prompt", limit=cfg.preference_limit, name="pref_eval")
        pref, table, follows = evaluate_preference(policy, tokenizer, pref_rows, max_new_tokens=cfg.max_new_tokens,
                                                   rollout=cfg.rollout, system_prompt=cfg.system_prompt,
                                                   table_rows=cfg.table_rows)
        metrics.update(pref)
        outcomes.update(pref_set=dataset_digest(pref_rows), follows_rules=[float(f) for f in follows])
        tracking.log_table(table, f"samples/{model.stage}-preference.json")
    ctx.log(metrics, 0)
    mlflow.set_tag("r1flow.evaluated_stage", model.stage)
    tracking.log_table(result.table, f"samples/{model.stage}.json")
    write_json(ctx.out_dir / "metrics.json", metrics)
    per_problem = ctx.out_dir / "per_problem.json"
    write_json(per_problem, outcomes)
    tracking.log_file(per_problem)
    digest = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()
    return EvalRef(model=model, metrics=metrics, run_id=ctx.run_id, digest=digest, scores=str(per_problem))
