"""One Prefect task runs any registered stage, cached on exactly what the stage depends on.

Cache key = sha256 of: the stage name, its recipe section, the model section and seed, the
upstream model's digest, the md5s of the data files it reads (from data.dvc), and a hash
of the code it runs. RUN_ID is deliberately not in it, so a second pipeline run executes
nothing, and a change anywhere reruns just the stages it reaches and their downstream.
The output and checkpoint folders are named by the key, so a killed stage restarted with
the same inputs resumes from its own checkpoints.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prefect import task
from prefect.context import get_run_context

from components.config import Recipe
from components.io import digest_path
from tasks import tracking
from tasks.refs import EvalRef, ModelRef
from tasks.versioning import DataRef, code_digest, git_commit


@dataclass
class StageContext:
    name: str
    recipe: Recipe
    upstream: ModelRef | None
    data: DataRef
    out_dir: Path       # write the result here (it does not exist yet)
    ckpt_dir: Path      # resumable checkpoints for this exact key
    run_id: str
    log: Callable[[dict, int], None]

    @property
    def cfg(self):
        return getattr(self.recipe, self.name, None)


@dataclass(frozen=True)
class StageSpec:
    fn: Callable[[StageContext], ModelRef | EvalRef]
    reads: tuple[str, ...]   # data files (relative to the data folder)
    code: tuple[str, ...]    # source paths whose change invalidates the stage
    section: str | None      # recipe section holding its config


STAGES: dict[str, StageSpec] = {}


def register(name: str, reads: tuple[str, ...], code: tuple[str, ...], section: str | None = None):
    def wrap(fn):
        STAGES[name] = StageSpec(fn, reads, code + ("tasks/stage.py", f"tasks/{fn.__module__.split('.')[-1]}.py"),
                                 section or name)
        return fn
    return wrap


def stage_key(stage: str, recipe: Recipe, upstream: ModelRef | None, data: DataRef) -> str:
    spec = STAGES[stage]
    section = recipe.model_dump(mode="json").get(spec.section)
    source = section.get("source") if isinstance(section, dict) else None
    payload = {
        "stage": stage,
        "section": section,
        "source": digest_path(source) if source and Path(source).exists() else None,  # user data content
        "model": recipe.model.model_dump(mode="json"),
        "seed": recipe.run.seed,
        "upstream": upstream.lineage_digest if upstream else None,
        "data": data.digest(spec.reads),
        "code": code_digest(*spec.code),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def output_dir(recipe: Recipe, stage: str, key: str) -> Path:
    return Path(recipe.run.output_dir).resolve() / "stages" / f"{stage}-{key[:16]}"


def _cache_key(context, parameters: dict) -> str:
    recipe = Recipe.model_validate(parameters["recipe"])
    return stage_key(parameters["stage"], recipe, parameters["upstream"], parameters["data"])


@task(cache_key_fn=_cache_key, persist_result=True, task_run_name="{label}", retries=0)
def stage_task(stage: str, recipe: dict, upstream: ModelRef | None, data: DataRef, parent_run_id: str,
               label: str = ""):
    """Run one registered stage in its own nested MLflow run (named `label`); returns a ModelRef or EvalRef."""
    cfg = Recipe.model_validate(recipe)
    spec = STAGES[stage]
    key = stage_key(stage, cfg, upstream, data)
    out = output_dir(cfg, stage, key)
    tags = {"r1flow.stage": stage, "r1flow.cache_key": key, "r1flow.data_md5": data.md5,
            "r1flow.code_hash": code_digest(*spec.code)[:16], "mlflow.source.git.commit": git_commit(Path.cwd()),
            "prefect.flow_run_id": str(get_run_context().task_run.flow_run_id),
            "r1flow.upstream": upstream.uri if upstream else ""}
    section = recipe.get(spec.section)
    with tracking.run(label or stage, cfg.run.experiment, parent_run_id=parent_run_id,
                      params={spec.section: section} if isinstance(section, dict) else None, tags=tags) as run_id:
        ctx = StageContext(stage, cfg, upstream, data, out, out.parent / f".ckpt-{out.name}", run_id,
                           tracking.metric_logger(run_id))
        result = spec.fn(ctx)
    (out / "result.json").write_text(json.dumps({"run_id": run_id, "key": key}))
    return result


def run_stage(stage: str, recipe: dict, upstream: ModelRef | None, data: DataRef, parent_run_id: str,
              label: str | None = None):
    """Run a stage through the cache; a cached result whose files were deleted is recomputed."""
    cfg = Recipe.model_validate(recipe)
    done = (output_dir(cfg, stage, stage_key(stage, cfg, upstream, data)) / "result.json").exists()
    return stage_task.with_options(refresh_cache=not done)(stage, recipe, upstream, data, parent_run_id,
                                                           label=label or stage)
