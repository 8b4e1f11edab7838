"""MLflow at the edge: one parent run per pipeline run, one nested run per stage.

Stages receive only a `log(metrics, step)` callable; everything MLflow-specific is here.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient


def experiment_id(name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=os.environ.get("R1FLOW_ARTIFACT_ROOT"))


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} for MLflow params (lists as JSON)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


@contextlib.contextmanager
def run(name: str, experiment: str, *, parent_run_id: str | None = None, params: dict | None = None,
        tags: dict | None = None) -> Iterator[str]:
    """Start (nested under `parent_run_id` if given) an MLflow run; yields its id."""
    with mlflow.start_run(run_name=name, experiment_id=experiment_id(experiment), nested=parent_run_id is not None,
                          parent_run_id=parent_run_id, tags={k: str(v) for k, v in (tags or {}).items()}) as r:
        if params:
            mlflow.log_params(flatten(params))
        yield r.info.run_id


def metric_logger(run_id: str, prefix: str = ""):
    """The `log(metrics, step)` callable handed to components, bound to one run."""
    client = MlflowClient()

    def log(metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            client.log_metric(run_id, f"{prefix}{key}", float(value), step=step)

    return log


def log_model(model, tokenizer, registered_name: str, alias: str) -> str:
    """Log a model as an MLflow transformers model, register it, alias the version with the stage."""
    import torch
    import transformers

    # Pinning the requirements skips MLflow's slow import-scanning inference.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task="text-generation", registered_model_name=registered_name,
                                         pip_requirements=requirements)
    client = MlflowClient()
    version = info.registered_model_version
    client.set_registered_model_alias(registered_name, alias, version)
    return f"models:/{registered_name}/{version}"


def log_dataset(path: str, digest: str, name: str, context: str, rows: list[dict] | None = None) -> None:
    """Record a dataset input (digest = DVC md5 or content hash) with a small preview."""
    import pandas as pd

    preview = pd.DataFrame(rows[:1000] if rows else [{"path": path}]).astype(str)
    ds = mlflow.data.from_pandas(preview, source=str(Path(path).resolve()), name=name, digest=digest[:32])
    mlflow.log_input(ds, context=context)


def log_table(rows: list[dict], artifact_file: str) -> None:
    if rows:
        mlflow.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file=artifact_file)


def download_model(uri: str, cache: Path) -> Path:
    """Fetch a logged model (runs:/ or models:/) and return its HF model directory."""
    import hashlib

    from mlflow.exceptions import MlflowException

    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except MlflowException as e:
        raise ValueError(f"--from: cannot fetch {uri}: {e.message}") from None
    weights = next((c.parent for c in sorted(local.rglob("config.json")) if any(c.parent.glob("*.safetensors"))), None)
    if weights is None:
        raise ValueError(f"--from: {uri} holds no Hugging Face model directory")
    # The transformers flavor keeps the tokenizer apart (components/tokenizer): put it beside the weights.
    for tok_file in (local / "components" / "tokenizer").glob("*"):
        if not (weights / tok_file.name).exists():
            shutil.copy2(tok_file, weights / tok_file.name)
    return weights
