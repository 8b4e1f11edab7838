"""The CLI's error paths: one clear message, exit code 2, nothing written."""
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_invalid_override_names_the_field_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(REPO / "configs/tiny.yaml"), "--set", "cold_start.lr=-1"])
    assert result.exit_code == 2
    assert "cold_start.lr: Input should be greater than 0" in result.output
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml: recipe file not found" in result.output


def test_data_status_without_data_dvc_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "status"])
    assert result.exit_code == 2 and "r1flow data generate" in result.output


def test_unknown_ui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ui", "grafana"])
    assert result.exit_code == 2 and "expected one of ['mlflow', 'prefect']" in result.output
