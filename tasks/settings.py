"""Project-local defaults for Prefect, MLflow and DVC, applied before any of them is imported.

Nothing here overrides what the user set: `PREFECT_API_URL` points r1flow at a real Prefect
server, `MLFLOW_TRACKING_URI` at a real tracking server. Next come the servers `r1flow server
start` runs for this project (their state is in `.r1flow/servers/`). Without any of them
everything lives under the project folder: Prefect's home and results in `.r1flow/`, MLflow in
`mlflow.db` + `mlruns/`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def project_root() -> Path:
    """The folder holding data.dvc (searched upwards from the working directory)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data.dvc").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def configure(root: Path | None = None) -> Path:
    from tasks.servers import running_env

    root = root or project_root()
    state = root / ".r1flow"
    for key, value in running_env(root).items():
        os.environ.setdefault(key, value)
    remote = os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http")
    defaults = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(state / "prefect-results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",  # Prefect's client telemetry notice
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not sys.stderr.isatty():  # MLflow's "Downloading artifacts" bar, in a log file: a line of carriage returns
        defaults["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if not remote:  # a tracking server stores artifacts where it was told to (its --artifacts-destination)
        defaults["R1FLOW_ARTIFACT_ROOT"] = (root / "mlruns").as_uri()
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    for key in ("PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return root
