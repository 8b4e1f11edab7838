"""Tasks the flow calls around the stages: data version, starting model, the parent MLflow run."""
from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow
from prefect import task
from prefect.context import get_run_context

from components.config import Recipe
from components.io import digest_path
from tasks import tracking
from tasks.refs import EvalRef, ModelRef
from tasks.versioning import DataRef, data_version, git_commit, read_dvc_file


@task(retries=1, retry_delay_seconds=2)
def data_task(root: str) -> DataRef:
    """The DVC data version (pulled first if the folder is missing)."""
    return data_version(Path(root))


def starting_model(recipe: Recipe) -> ModelRef | None:
    """The model the recipe names (then the base stage is skipped), or None to pretrain one."""
    name = recipe.model.name_or_path
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(uri=str(path.resolve()), digest=digest_path(path), stage="base")
    return ModelRef(uri=name, digest=f"hub:{name}@{recipe.model.revision or 'main'}", stage="base")


@contextlib.contextmanager
def pipeline_run(recipe: Recipe, root: Path):
    """The parent MLflow run of one pipeline run: resolved recipe as params, lineage tags."""
    _, md5 = read_dvc_file(root)
    tags = {"mlflow.source.git.commit": git_commit(root), "r1flow.data_md5": md5,
            "prefect.flow_run_id": str(get_run_context().flow_run.id), "r1flow.recipe": recipe.run.name}
    with tracking.run(recipe.run.name, recipe.run.experiment, params=recipe.model_dump(mode="json"),
                      tags=tags) as run_id:
        yield run_id


def record_stage(stage: str, result) -> None:
    """Point the parent run at a stage's result (also when the stage came from the cache)."""
    if isinstance(result, EvalRef):
        mlflow.log_metrics({f"{result.model.stage}.{k}": v for k, v in result.metrics.items()})
        mlflow.set_tag(f"r1flow.eval_run.{result.model.stage}", result.run_id or "")
    elif isinstance(result, ModelRef):
        mlflow.set_tag(f"r1flow.stage_run.{stage}", result.run_id or "")
        mlflow.set_tag(f"r1flow.model.{stage}", result.registered or result.uri)


def resolve_model(uri: str, root: Path) -> ModelRef:
    """A model given as a local directory, an MLflow `runs:/…` URI or a registry `models:/NAME@ALIAS`."""
    path = Path(uri).expanduser()
    if path.is_dir():
        return ModelRef(uri=str(path.resolve()), digest=digest_path(path), stage="given")
    if not uri.startswith(("runs:/", "models:/")):
        raise ValueError(f"--from: {uri!r} is neither a directory nor a runs:/ or models:/ URI")
    local = tracking.download_model(uri, root / ".r1flow" / "downloads")
    return ModelRef(uri=str(local), digest=digest_path(local), stage="given", registered=uri)
