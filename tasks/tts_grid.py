"""Test-time scaling over several models (`r1flow tts`): one cached `tts_eval` task per (model,
strategy, budget), submitted together to the recipe's task runner, then one combined record.

Each cell is the `tts_eval` stage with a one-cell section, so it has its own cache key (a model
or budget added to the grid runs only what is new), its own MLflow run and Prefect task.
Compute-optimal scaling, when the recipe configures it, is one more task per model: it fits
its plan on the dev half and is evaluated beside best-of-N on the test half (its frontier).
The pipeline's run then holds `tts/grid.json` and `tts/grid.md` (model, strategy, budget,
accuracy with its interval, tokens, verifier calls) and `tts/accuracy_vs_tokens.png`, one
line per (model, strategy), which the run's report shows.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from components.evaluation.tts import plot_accuracy_vs_tokens
from components.evaluation.tts_config import CellSpec
from tasks import tracking
from tasks.console import say
from tasks.refs import EvalRef, ModelRef

COLUMNS = ("model", "strategy", "budget", "accuracy", "ci_low", "ci_high", "tokens", "verifier_calls", "n")


def cell_sections(cfg) -> dict[str, object]:
    """{label suffix: one-cell tts_eval section} for every (strategy, budget) of `cfg`, plus compute-optimal."""
    sections = {f"{c.name or c.strategy}/n{b}": cfg.model_copy(update={
        "cells": [c.model_copy(update={"budgets": [b]})], "compute_optimal": None})
        for c in cfg.cells for b in c.budgets}
    if cfg.compute_optimal is not None:
        baseline = next((c for c in cfg.cells if c.strategy == "best_of_n"), None)
        budgets = baseline.budgets if baseline else [1, 2, 4, 8, 16]
        sections["compute_optimal"] = cfg.model_copy(update={"cells": [CellSpec(strategy="best_of_n",
                                                                                budgets=budgets)]})
    return sections


def tts_grid(run, spec, models: dict[str, ModelRef], process_verifier: ModelRef | None,
             verifier: ModelRef | None = None) -> list[dict]:
    """Run the grid of `run.recipe.tts_eval` for every model; log and return the combined rows."""
    cfg = run.recipe.section(spec.name)
    rows = []
    for label, model in models.items():
        sections = {f"tts/{label}/{cell}": section for cell, section in cell_sections(cfg).items()}
        outputs = run.call_variants(spec, {"policy": model, "verifier": verifier, "process_verifier": process_verifier},
                                    sections, report_files=False)
        for result in outputs.values():
            rows += [{"model": label, **row} for row in _summary(result)["rows"]]
    rows = _unique(rows)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_accuracy_vs_tokens([{**r, "strategy": f"{r['model']}: {r['strategy']}"} for r in rows],
                                      Path(tmp) / "accuracy_vs_tokens.png", title="Accuracy vs generated tokens")
        mlflow.log_artifact(str(png), "tts")
        mlflow.log_artifact(str(png), "report")
        run.files[png.name] = "report"
    tracking.log_table([{k: r.get(k) for k in COLUMNS} for r in rows], "tts/grid.json")
    table = markdown(rows)
    mlflow.log_text(table, "tts/grid.md")
    say("test-time scaling, every model × strategy × budget:\n" + table)
    return rows


def _summary(result: EvalRef) -> dict:
    return json.loads((Path(result.files["accuracy_vs_tokens.png"]).parent / "summary.json").read_text())


def _unique(rows: list[dict]) -> list[dict]:
    """One row per (model, strategy, budget): best-of-N also runs inside the compute-optimal task."""
    seen, out = set(), []
    for r in rows:
        key = (r["model"], r["strategy"], r["budget"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return sorted(out, key=lambda r: (r["model"], r["strategy"], r["budget"]))


def markdown(rows: list[dict]) -> str:
    lines = ["| model | strategy | budget | accuracy (95 % CI) | tokens | verifier calls |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['strategy']} | {r['budget']} | {100 * r['accuracy']:.1f} % "
              f"({100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}) | {r['tokens']:.0f} | {r['verifier_calls']:.1f} |"
              for r in rows]
    return "\n".join(lines)
