"""Score given models on the recipe's held-out set (`r1flow evaluate MODEL…`), side by side.

The first model is the baseline: every other one gets its gain over it, problem by problem on
the same held-out set, with the paired standard error (as a pipeline reports each stage's gain
over the model it started from).

The evaluations fan out on the recipe's task runner (`runner.task_runner`: sequential by
default, or threads, Dask, Ray); each is the cached `evaluate` stage, so a model already scored
on the same held-out data is not scored again.
"""
# No `from __future__ import annotations` here: `r1flow serve` runs the flow from a pickled copy in a
# spawned process, where the parameter types must be objects, not names to resolve (KeyError / not defined).
import re
from pathlib import Path

from prefect import flow

from tasks.flow_names import pipeline_run_name
from tasks.inputs import resolve_model
from tasks.pipeline import pipeline
from tasks.recipe import Recipe


def model_label(uri: str) -> str:
    """A label usable as an MLflow metric prefix: `models:/tiny@sft` -> `tiny-sft`."""
    text = uri.split(":/", 1)[-1] if ":/" in uri else "/".join(Path(uri).parts[-2:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


@flow(name="r1_evaluate", flow_run_name=pipeline_run_name, log_prints=True)
def r1_evaluate(models: list[str], recipe: Recipe, root: str = ".") -> dict:
    """Score each model (a directory, runs:/… or models:/NAME@ALIAS) on the held-out set; the
    others' paired gains over the first."""
    refs = {model_label(uri): resolve_model(uri, Path(root).resolve()) for uri in models}
    with pipeline(recipe, root) as run:
        run.evaluate_models(refs)
        baseline = next(iter(refs.values()))
        for label in list(refs)[1:]:
            run.gain(label, baseline, refs[label])
    return run.report()
