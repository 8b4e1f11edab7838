"""Test-time scaling of several models (`r1flow tts MODEL… --process-verifier PRM`): every strategy
and budget of the recipe's `tts_eval` section, one cached Prefect task per (model, strategy,
budget), submitted together to the recipe's task runner (`runner.task_runner`), then one
combined table and plot (`tasks/tts_grid.py`)."""
# No `from __future__ import annotations` here: `r1flow serve` runs the flow from a pickled copy in a
# spawned process, where the parameter types must be objects, not names to resolve (KeyError / not defined).
from pathlib import Path

from prefect import flow

from flows.evaluate import model_label
from tasks.flow_names import pipeline_run_name
from tasks.inputs import resolve_model
from tasks.pipeline import pipeline
from tasks.recipe import Recipe
from tasks.stages import get_stage
from tasks.tts_grid import tts_grid


@flow(name="r1_tts", flow_run_name=pipeline_run_name, log_prints=True)
def r1_tts(models: list[str], recipe: Recipe, process_verifier: str = "", verifier: str = "",
           root: str = ".") -> dict:
    """Accuracy against compute of each model (a directory, runs:/… or models:/NAME@ALIAS)."""
    where = Path(root).resolve()
    refs = {model_label(uri): resolve_model(uri, where) for uri in models}
    prm = resolve_model(process_verifier, where, "process_verifier") if process_verifier else None
    orm = resolve_model(verifier, where, "verifier") if verifier else None
    with pipeline(recipe, root) as run:
        rows = tts_grid(run, get_stage("tts_eval"), refs, prm, orm)
    return run.report() | {"tts": rows}
