"""The side-by-side comparison of alignment methods (`alignment.compare` in a recipe).

Every listed method runs from the same starting policy, reward model and data (as parallel
Prefect tasks on the recipe's task runner; each is cached like any stage, so the method the
pipeline already ran is not trained twice). One MLflow comparison is logged on the pipeline's
run: a table (`comparison/alignment.md` and an MLflow table) with the true-preference gain (its
standard error paired prompt by prompt, as in the pipeline's gain lines), the reasoning accuracy
retained, KL, reward-model score, wall time and tokens generated per method, and a plot
(`comparison/alignment_comparison.png`, also shown in the run's `report/report.md`).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from components.evaluation.compare import comparison_rows, markdown_table, plot_comparison
from tasks import tracking
from tasks.console import say
from tasks.refs import ModelRef


def compare_alignment(run, spec, policy: ModelRef | None, reward_model: ModelRef | None) -> list[dict]:
    """Run every method of `alignment.compare` and log the comparison; [] when the recipe lists none."""
    cfg = run.recipe.section(spec.name)
    if not cfg.compare or policy is None or spec.name not in run.recipe.run.stages:
        return []
    run.evaluate(policy, "policy")  # the methods' common start: a given model was not evaluated yet
    sections = {f"{spec.name}/{m}": cfg.model_copy(update={"method": m}) for m in cfg.compare}
    outputs = run.call_variants(spec, {"policy": policy, "reward_model": reward_model}, sections)
    before = run.evaluated[policy.digest].metrics
    # (by digest: a method whose model is the pipeline's own alignment was evaluated under that label)
    results = {label.split("/", 1)[1]: _result(before, run.evaluated[model.digest].metrics, _summary(model),
                                               run.gains.get(label, {}))
               for label, model in outputs.items()}
    rows = comparison_rows(results)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_comparison(rows, Path(tmp) / "alignment_comparison.png")
        mlflow.log_artifact(str(png), "comparison")
        mlflow.log_artifact(str(png), "report")  # beside report.md, which shows it
        run.files[png.name] = "report"
    table = markdown_table(rows)
    mlflow.log_text(table, "comparison/alignment.md")
    tracking.log_table(rows, "comparison/alignment.json")
    say("alignment methods, side by side:\n" + table)
    return rows


def _summary(model: ModelRef) -> dict:
    return json.loads((Path(model.uri).parent / "summary.json").read_text())


def _result(before: dict, after: dict, summary: dict, gain: dict) -> dict:
    """A method's row inputs; `gain` is the pipeline's gain of its model over the start
    (`PipelineRun.gain`), whose house-rules error is paired prompt by prompt when both were scored
    on the same preference prompts."""
    paired = {"preference_gain_se": gain["preference_gain_se"]} if "preference_gain_se" in gain else {}
    return {"preference_before": before["preference_rate"], "preference_after": after["preference_rate"],
            "preference_n": after["preference_n"], "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"], "kl": summary["kl"], "rm_score": summary.get("rm_score", 0.0),
            "rm_score_before": summary.get("rm_score_before", 0.0),
            "wall_s": summary["wall_s"], "tokens_generated": summary["tokens_generated"]} | paired
