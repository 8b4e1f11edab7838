"""Project-local defaults that `configure` applies before Prefect, MLflow or DVC is imported."""
from __future__ import annotations

import os
import sys

import pytest

from tasks.settings import configure


@pytest.fixture()
def environ():
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("tty, bar", [(False, "false"), (True, None)])
def test_mlflow_draws_its_download_bar_only_on_a_terminal(tmp_path, monkeypatch, environ, tty, bar):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert configure(tmp_path) == tmp_path
    assert environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") == bar


def test_a_users_own_setting_wins(tmp_path, monkeypatch, environ):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true"
    configure(tmp_path)
    assert environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
