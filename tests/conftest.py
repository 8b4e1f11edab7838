"""Test session set-up: offline, project-local state in a temp folder, one Prefect server.

The environment is fixed before Prefect or MLflow are imported anywhere, so every test
talks to a throw-away SQLite MLflow store and a temporary Prefect server, never to the
developer's own `.r1flow/`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="r1flow-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_HOME": str(SESSION_DIR / "prefect"),
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(SESSION_DIR / "prefect-results"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_TRACKING_URI": f"sqlite:///{SESSION_DIR / 'mlflow.db'}",
    "R1FLOW_ARTIFACT_ROOT": (SESSION_DIR / "mlruns").as_uri(),
})
(SESSION_DIR / "prefect").mkdir()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture()
def single_thread():
    """One torch thread for the test: with tiny tensors, intra-op threads only add barrier
    waits, which turn pathological on a shared, oversubscribed 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def temporary_rewards(**fns):
    """Register reward functions for the duration of a test module only (no leak into others)."""
    from components.rewards import REWARDS, register_reward

    for name, fn in fns.items():
        register_reward(name)(fn)
    try:
        yield
    finally:
        for name in fns:
            REWARDS.pop(name, None)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def make_project(folder: Path, recipe: str = "configs/tiny.yaml") -> Path:
    """A fresh r1flow project: the tiny recipe, DVC with a local remote, generated data (in the
    recipe's `data.dir`, recorded in `<data.dir>.dvc`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "configs", folder / "configs", dirs_exist_ok=True)
    run = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=folder, check=True,  # noqa: E731
                                    capture_output=True)
    run("init", "-q", "--no-scm")
    run("remote", "add", "-q", "-d", "local", str(folder / "dvc-remote"))
    from tasks.recipe import load_recipe
    from components.data.curate import build

    data = load_recipe(folder / recipe).data
    build(data, folder / data.dir)
    run("add", "-q", data.dir)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from components.data import arithmetic as ar
    from components.data.curate import chat_text
    from components.modeling.tokenizer import train_tokenizer

    problems = ar.generate(0, 200, [1, 2, 3, 4], heldout=False)
    return train_tokenizer([chat_text(p.expression, p.solution()) + f" {p.expression}: " for p in problems],
                           vocab_size=64)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from components.config import ArchConfig
    from components.modeling.models import build_tiny_llama

    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=64,
                      max_position_embeddings=128)
    return build_tiny_llama(arch, tiny_tokenizer, seed=0)
