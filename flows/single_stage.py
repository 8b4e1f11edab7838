"""Rerun one stage from given inputs (`r1flow stage NAME --policy … --reward-model …`), then evaluate it
and the model it started from (its `passthrough` input; a cache hit when a pipeline already scored
that model on the same held-out set), and report its paired gain over that model."""
# No `from __future__ import annotations` here: `r1flow serve` runs the flow from a pickled copy in a
# spawned process, where the parameter types must be objects, not names to resolve (KeyError / not defined).
from prefect import flow

from flows.evaluate import model_label
from tasks.flow_names import pipeline_run_name
from tasks.inputs import resolve_inputs
from tasks.pipeline import pipeline
from tasks.recipe import Recipe
from tasks.refs import ModelRef
from tasks.stages import get_stage


@flow(name="r1_stage", flow_run_name=pipeline_run_name, log_prints=True)
def r1_stage(stage: str, recipe: Recipe, inputs: dict[str, str], root: str = ".") -> dict:
    """Run `stage` on `inputs` (input name -> model directory, runs:/ or models:/ URI, or data file)."""
    spec = get_stage(stage)
    refs = resolve_inputs(spec, inputs, root)
    with pipeline(recipe, root) as run:
        result = run.call(spec, refs, force=True)
        start = refs.get(spec.passthrough) if spec.passthrough else None
        if spec.evaluate and isinstance(result, ModelRef) and isinstance(start, ModelRef):
            run.evaluate(start, model_label(inputs[spec.passthrough]))
            run.gain(stage, start, result)
    return run.report()
