"""Rerun one stage from a given model (`r1flow stage NAME --from MODEL`), then evaluate it."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

import tasks.evaluate  # noqa: F401  (registers the stage)
import tasks.reasoning_stages  # noqa: F401  (registers the stages)
import tasks.train_stages  # noqa: F401  (registers the stages)
from components.config import Recipe
from tasks.pipeline import data_task, pipeline_run, record_stage, resolve_model
from tasks.stage import STAGES
from tasks.stage import run_stage


@flow(name="r1_stage", log_prints=True)
def single_stage(stage: str, recipe: dict, from_model: str, root: str = ".") -> dict:
    if stage not in STAGES:
        raise ValueError(f"stage: unknown stage {stage!r}; choose from {sorted(STAGES)}")
    cfg = Recipe.model_validate(recipe)
    data = data_task(str(Path(root).resolve()))
    upstream = resolve_model(from_model, Path(root))
    with pipeline_run(cfg, Path(root)) as parent:
        model = run_stage(stage, recipe, upstream, data, parent, label=stage)
        record_stage(stage, model)
        if stage == "evaluate":
            return {stage: model.metrics}
        scores = run_stage("evaluate", recipe, model, data, parent, label=f"evaluate/{stage}")
        record_stage("evaluate", scores)
    return {stage: scores.metrics}
