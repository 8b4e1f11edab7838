"""The one cached Prefect task every stage runs in: `stage_task`.

Its cache key is the stage's `tasks.stage.stage_key`; it runs the stage in its own MLflow run
(nested under the pipeline's) with the tags that line runs up across pipelines (`r1flow.stage`,
`r1flow.kind`, `r1flow.recipe`, `r1flow.cache_key`, `r1flow.data_md5`, `r1flow.input.*`), and
writes `result.json` into the stage's output folder when it succeeded. With `run.num_processes` > 1
a supervised stage runs data-parallel under `accelerate launch` (tasks/launch.py), in the same run.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import task
from prefect.context import get_run_context

from components.config import ModelConfig, RunConfig, Section
from components.io import write_json
from tasks import tracking
from tasks.console import StageReporter, say
from tasks.launch import launch_stage, runs_data_parallel
from tasks.refs import DatasetRef, EvalRef, ModelRef
from tasks.stage import StageContext, output_dir, stage_key
from tasks.stages import get_stage
from tasks.versioning import DataRef, code_digest, git_commit


def _cache_key(context, parameters: dict) -> str:
    spec = get_stage(parameters["name"])
    return stage_key(spec, parameters["cfg"], parameters["model"], parameters["run"].seed, parameters["inputs"],
                     parameters["data"])


@task(cache_key_fn=_cache_key, persist_result=True, retries=0)
def stage_task(name: str, cfg: Section, model: ModelConfig, run: RunConfig, inputs: dict, data: DataRef,
               parent_run_id: str, label: str):
    """Run one stage in its own MLflow run (nested under the pipeline's), named `label`."""
    spec = get_stage(name)
    key = stage_key(spec, cfg, model, run.seed, inputs, data)
    out = output_dir(run.output_dir, name, key)
    ckpt_dir = out.parent / f".ckpt-{out.name}"  # kept until the stage finishes: a restart resumes from it
    tags = {"r1flow.stage": name, "r1flow.cache_key": key, "r1flow.data_md5": data.md5, "r1flow.recipe": run.name,
            "r1flow.kind": "evaluation" if name == "evaluate" else "stage",
            "r1flow.code_hash": code_digest(*spec.code)[:16], "mlflow.source.git.commit": git_commit(Path.cwd()),
            "prefect.flow_run_id": str(get_run_context().task_run.flow_run_id),
            **{f"r1flow.input.{k}": output_label(v) for k, v in inputs.items() if v is not None}}
    say(f"▶ {label}  started  (key {key[:12]})")
    reporter = StageReporter(label)
    t0 = time.perf_counter()
    try:
        # Params unprefixed (lr, steps, finetune, …): stage runs line up row by row in MLflow's compare view;
        # the parent run holds the whole recipe with section prefixes (cold_start.lr, …).
        with tracking.run(label, run.experiment, parent_run_id=parent_run_id, params=cfg.model_dump(mode="json"),
                          tags=tags) as run_id:
            log = tracking.metric_logger(run_id, echo=reporter.log)
            ctx = StageContext(name, cfg, model, run.seed, run.name, data, out, ckpt_dir, run_id, log,
                               reporter.progress, label)
            t_fn, tracked = time.perf_counter(), tracking.seconds_spent()
            if runs_data_parallel(spec, run):
                result = launch_stage(spec, ctx, inputs, run, label)
            else:
                result = spec.run(ctx, inputs)
            # the stage's own work: its function's time less what it spent writing to MLflow
            compute = time.perf_counter() - t_fn - (tracking.seconds_spent() - tracked)
    finally:
        reporter.close()
    wall = time.perf_counter() - t0  # the task's own time, waiting in a runner's queue excluded
    write_json(out / "result.json", {"run_id": run_id, "key": key, "compute_s": compute, "wall_s": wall})
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished and cached: its checkpoints only take disk
    say(f"✔ {label}  done in {wall:.1f} s  → {output_label(result)}")
    return result


def run_id_of(result) -> str:
    return getattr(result, "run_id", None) or ""


def output_label(result) -> str:
    if isinstance(result, (ModelRef, DatasetRef)):
        return result.registered if isinstance(result, ModelRef) and result.registered else result.uri
    if isinstance(result, EvalRef):
        if "accuracy" in result.metrics:
            return f"accuracy {result.metrics['accuracy']:.3f}"
        return f"{len(result.metrics)} metrics" + (f" ({', '.join(result.files)})" if result.files else "")
    return str(result)
