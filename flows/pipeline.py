"""The R1 outline as a Prefect flow: each training stage of the recipe, then its evaluation."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

import tasks.evaluate  # noqa: F401  (registers the stage)
import tasks.reasoning_stages  # noqa: F401  (registers the stages)
import tasks.train_stages  # noqa: F401  (registers the stages)
from components.config import Recipe
from tasks.pipeline import data_task, pipeline_run, record_stage, starting_model
from tasks.stage import run_stage


@flow(name="r1_pipeline", log_prints=True)
def r1_pipeline(recipe: dict, root: str = ".") -> dict:
    """Run the recipe's stages in order, evaluating each stage's model on the held-out split."""
    cfg = Recipe.model_validate(recipe)
    data = data_task(str(Path(root).resolve()))
    model = starting_model(cfg)
    metrics = {}
    with pipeline_run(cfg, Path(root)) as parent:
        for stage in cfg.run.stages:
            if stage == "base" and model is not None:
                continue  # the recipe names an existing model: nothing to pretrain
            previous, model = model, run_stage(stage, recipe, model, data, parent, label=stage)
            record_stage(stage, model)
            if previous is not None and model.digest == previous.digest:
                continue  # same weights (rejection sampling only derives data): nothing new to evaluate
            scores = run_stage("evaluate", recipe, model, data, parent, label=f"evaluate/{stage}")
            record_stage("evaluate", scores)
            metrics[stage] = scores.metrics
            print(f"{stage}: accuracy {scores.metrics['accuracy']:.3f} ± {scores.metrics['accuracy_se']:.3f}")
    return metrics
