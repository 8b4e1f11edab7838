"""MLflow at the edge: one parent run per pipeline run, one nested run per stage.

Stages receive only a `log(metrics, step)` callable; everything MLflow-specific is here.
Every run records the process that owns it (`r1flow.host`, `r1flow.pid`, `r1flow.pid_started`),
so a run left RUNNING by a process that was killed (`kill -9`, a lost machine) is found and
marked KILLED by the next pipeline that starts (`reap_orphaned_runs`). A run that ends with an
exception is FAILED and carries the error in the tag `r1flow.error`. Ctrl-C and SIGTERM wait
for the tracking write in progress (`signals_held`): one cut mid-transaction would leave the
SQLite store locked for the writes that record the interruption.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


# MLflow's UI opens an experiment of this kind on its runs table (without it: the empty GenAI overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
ERROR_TAG = "r1flow.error"


def experiment_id(name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return mlflow.create_experiment(name, artifact_location=os.environ.get("R1FLOW_ARTIFACT_ROOT"),
                                        tags=EXPERIMENT_KIND)
    if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
        MlflowClient().set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return exp.experiment_id


def owner_tags() -> dict[str, str]:
    """Which process owns a run: checked by `reap_orphaned_runs` (the start time guards against pid reuse)."""
    import psutil

    return {"r1flow.host": socket.gethostname(), "r1flow.pid": str(os.getpid()),
            "r1flow.pid_started": repr(psutil.Process().create_time())}


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
def signals_held(note: str | None = None) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver the first that came; `note` is
    printed when one is held (for a block that may take a while). Python runs signal handlers
    in the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        if note and not held:
            os.write(2, f"r1flow: {note}\n".encode())
        held.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(sig)):  # a Python handler (not SIG_DFL/SIG_IGN, not one set from C)
            previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


@contextlib.contextmanager
def run(name: str, experiment: str, *, parent_run_id: str | None = None, params: dict | None = None,
        tags: dict | None = None) -> Iterator[str]:
    """Start (nested under `parent_run_id` if given) an MLflow run; yields its id. An exception
    ends it FAILED with the error as the tag `r1flow.error` (KILLED for Ctrl-C and SIGTERM)."""
    tags = {**owner_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
    with signals_held():
        r = mlflow.start_run(run_name=name, experiment_id=experiment_id(experiment),
                             nested=parent_run_id is not None, parent_run_id=parent_run_id, tags=tags)
        if params:
            mlflow.log_params(flatten(params))
    try:
        yield r.info.run_id
    except BaseException as e:
        from prefect.exceptions import TerminationSignal  # here: importing Prefect reads PREFECT_API_URL

        with signals_held():
            MlflowClient().set_tag(r.info.run_id, ERROR_TAG, f"{type(e).__name__}: {e}"[:4000])
            while (active := mlflow.active_run()) is not None and active.info.run_id != r.info.run_id:
                mlflow.end_run("FAILED")  # a run the stage left open
            mlflow.end_run("KILLED" if isinstance(e, (KeyboardInterrupt, TerminationSignal)) else "FAILED")
        raise
    with signals_held():
        mlflow.end_run("FINISHED")


def _owner_gone(tags: dict) -> bool:
    import psutil

    if tags.get("r1flow.host") != socket.gethostname() or "r1flow.pid" not in tags:
        return False  # another machine's run: only that machine can tell
    try:
        return repr(psutil.Process(int(tags["r1flow.pid"])).create_time()) != tags.get("r1flow.pid_started")
    except psutil.Error:
        return True


def open_store() -> None:
    """Open the tracking store now: a local SQLite store's first use imports SQLAlchemy and checks
    its schema (~1 s), which a command does while its private Prefect server boots."""
    MlflowClient().search_experiments(max_results=1)


def reap_orphaned_runs() -> list:
    """Mark KILLED every RUNNING run on this machine whose owning process is gone; returns those runs."""
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    running = client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    reaped = []
    for r in running:
        if _owner_gone(r.data.tags):
            client.set_tag(r.info.run_id, ERROR_TAG, f"process {r.data.tags['r1flow.pid']} on "
                           f"{r.data.tags['r1flow.host']} ended without closing this run (killed)")
            client.set_terminated(r.info.run_id, "KILLED")
            reaped.append(r)
    return reaped


_SPENT = [0.0]  # seconds spent in the calls below that write to MLflow (this process)


def seconds_spent() -> float:
    """Wall time this process has spent writing to MLflow through this module (a running total)."""
    return _SPENT[0]


def _timed(fn=None, *, note: str | None = None):
    """Count `fn`'s wall time into `seconds_spent()` (how a stage's compute is told from its
    tracking), holding Ctrl-C and SIGTERM until the write is done."""
    if fn is None:
        return functools.partial(_timed, note=note)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            with signals_held(note):
                return fn(*args, **kwargs)
        finally:
            _SPENT[0] += time.perf_counter() - t0

    return wrapper


def metric_logger(run_id: str, prefix: str = "", echo=None):
    """The `log(metrics, step)` callable handed to components, bound to one run: one batched
    MLflow call per log line; `echo(metrics, step)` also sees them (e.g. the Prefect run log)."""
    client = MlflowClient()

    @_timed
    def log(metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        values = [Metric(f"{prefix}{k}", float(v), now, step) for k, v in metrics.items()]
        client.log_batch(run_id, metrics=values, synchronous=True)
        if echo is not None:
            echo(metrics, step)

    return log


# MLflow's transformers-flavor task for each kind of model directory (tasks/refs.py MODEL_KINDS)
FLAVOR_TASKS = {"causal_lm": "text-generation", "sequence_classifier": "text-classification",
                "token_classifier": "token-classification"}


@_timed(note="stopping once the model being logged to MLflow is written")
def log_model(model, tokenizer, registered_name: str, alias: str, kind: str = "causal_lm",
              license: str = "apache-2.0") -> str:
    """Log a model as an MLflow transformers model, register it, alias the version with the stage."""
    import torch
    import transformers

    # Pinning the requirements skips MLflow's slow import-scanning inference.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task=FLAVOR_TASKS[kind], pip_requirements=requirements,
                                         model_card=model_card(registered_name, alias, license))
    # Registered through the client: `registered_model_name=` would print "already exists" lines.
    client = MlflowClient()
    _ensure_registered_model(client, registered_name)
    version = client.create_model_version(registered_name, source=info.model_uri, run_id=info.run_id,
                                          model_id=info.model_id).version
    client.set_registered_model_alias(registered_name, alias, version)
    return f"models:/{registered_name}/{version}"


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


@_timed
def claim(registered: str | None, name: str, alias: str) -> str | None:
    """Point `models:/name@alias` at a cached stage's model `registered` (``models:/NAME/VERSION``), and
    return it as a version of `name`. A cached stage re-claims its alias, which a `r1flow stage`
    experiment may have moved; a version of another registered model (the cache is shared by every
    recipe of a project: the stage ran under another `run.name`) is registered again under `name`,
    once (the same artifacts, no copy, with its tags), so that this recipe's aliases and its
    champion always name the models its latest run used. Anything else is returned unchanged."""
    if not registered or not registered.startswith("models:/") or "@" in registered:
        return registered
    other, _, version = registered.removeprefix("models:/").rpartition("/")
    client = MlflowClient()
    try:
        if other != name:
            theirs = client.get_model_version(other, version)
            ours = [v for v in client.search_model_versions(f"name='{name}' and run_id='{theirs.run_id}'")
                    if v.source == theirs.source]
            if ours:
                version = ours[0].version
            else:
                _ensure_registered_model(client, name)
                version = client.create_model_version(name, source=theirs.source, run_id=theirs.run_id,
                                                      tags=theirs.tags, model_id=theirs.model_id).version
        client.set_registered_model_alias(name, alias, version)
    except MlflowException:  # the version was deleted from the registry: nothing to point at
        return registered
    return f"models:/{name}/{version}"


def model_card(name: str, stage: str, license: str):
    """The card MLflow stores with a model (without one it looks for it on the hub and warns)."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\nlicense: {license}\nlibrary_name: transformers\ntags: [r1flow, {stage}]\n---\n\n"
                     f"# {name} · {stage}\n\nProduced by the r1flow stage `{stage}` of the recipe `{name}`.\n")


@_timed
def log_dataset(path: str, digest: str, name: str, context: str, rows: list[dict] | None = None) -> None:
    """Record a dataset input (digest = DVC md5 or content hash) with a small preview."""
    import pandas as pd

    preview = pd.DataFrame(rows[:1000] if rows else [{"path": path}]).astype(str)
    ds = mlflow.data.from_pandas(preview, source=dataset_source(path), name=name, digest=digest[:32])
    mlflow.log_input(ds, context=context)


def dataset_source(path: str):
    """The MLflow source of a dataset, given explicitly: resolving a plain path string makes MLflow
    warn that it matches two identical local source classes (it registers one for "" and "file")."""
    if path.startswith("hf:"):
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        return HuggingFaceDatasetSource(path=path[3:])
    from mlflow.data.dataset_source_registry import get_registered_sources

    local = next(c for c in get_registered_sources() if c._get_source_type() == "local")
    return local(str(Path(path).resolve()))


@_timed
def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


@_timed
def log_table(rows: list[dict], artifact_file: str) -> None:
    if rows:
        mlflow.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file=artifact_file)


def resolve_latest(uri: str, what: str = "model") -> str:
    """`models:/NAME/latest` as `models:/NAME/<its newest version>`; any other URI unchanged."""
    name, _, version = uri.removeprefix("models:/").partition("/")
    if not uri.startswith("models:/") or version.lower() != "latest":
        return uri
    versions = [int(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")]
    if not versions:
        raise ValueError(f"--{what.replace('_', '-')}: cannot fetch {uri}: no registered model {name!r} has a version")
    return f"models:/{name}/{max(versions)}"


def download_model(uri: str, cache: Path, what: str = "model") -> Path:
    """Fetch a logged model (runs:/ or models:/) once and return its HF model directory.

    A registry alias is resolved to its version first, so a moved alias fetches the new model.
    """
    import hashlib
    import tempfile

    from mlflow.exceptions import MlflowException

    flag = f"--{what.replace('_', '-')}"
    try:
        if uri.startswith("models:/") and "@" in uri:
            name, alias = uri[len("models:/"):].split("@", 1)
            version = MlflowClient().get_model_version_by_alias(name, alias)
            uri = f"models:/{name}/{version.version}"
        target = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
                Path(tmp).rename(target)
                Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    except MlflowException as e:
        raise ValueError(f"{flag}: cannot fetch {uri}: {e.message}") from None
    weights = next((c.parent for c in sorted(target.rglob("config.json")) if any(c.parent.glob("*.safetensors"))),
                   None)
    if weights is None:
        raise ValueError(f"{flag}: {uri} holds no Hugging Face model directory")
    # The transformers flavor keeps the tokenizer apart (components/tokenizer): put it beside the weights.
    for tok_file in target.rglob("components/tokenizer/*"):
        if not (weights / tok_file.name).exists():
            shutil.copy2(tok_file, weights / tok_file.name)
    return weights
