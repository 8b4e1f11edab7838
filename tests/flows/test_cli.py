"""The CLI's error paths: one clear message, exit code 2, nothing written."""
from pathlib import Path

import pytest

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


def test_data_status_of_a_missing_folder_changes_nothing(tmp_path, monkeypatch):
    import shutil

    shutil.copy2(REPO / "data-tiny.dvc", tmp_path / "data-tiny.dvc")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "status", str(REPO / "configs/tiny.yaml")])
    assert result.exit_code == 2 and "data-tiny: missing; `r1flow data ensure" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data-tiny.dvc"], "no pull, no folder"


def test_serve_needs_the_projects_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = runner.invoke(app, ["serve", str(REPO / "configs/tiny.yaml")])
    assert result.exit_code == 2 and "no Prefect server: run `r1flow server start`" in result.output


def test_tts_without_the_verifier_a_strategy_needs_is_one_line_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cells = "tts_eval.cells=[{strategy: greedy, budgets: [1]}, {strategy: beam_search, budgets: [4]}]"
    result = runner.invoke(app, ["tts", str(model), "--recipe", str(REPO / "configs/tiny.yaml"), "--set", cells])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: tts_eval.cells.1: beam_search scores with a learned verifier; give "
                                     "--process-verifier")


def test_a_port_out_of_range_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["server", "start", "prefect", "--prefect-port", "99999"])
    assert result.exit_code == 2 and "Invalid value for '--prefect-port'" in result.output, result.output
    assert not (tmp_path / ".r1flow" / "servers").exists(), "nothing started, nothing recorded"


def test_unknown_ui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ui", "grafana"])
    assert result.exit_code == 2 and "expected one of ['mlflow', 'prefect']" in result.output


def test_a_bad_input_path_is_one_line_before_any_flow_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["stage", "cold_start", str(REPO / "configs/tiny.yaml"), "--from", "runs/nope/model"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --policy: 'runs/nope/model' is neither a directory nor a runs:/ or "
                                     "models:/ URI")
    assert not (tmp_path / ".r1flow" / "prefect" / "prefect.db").exists(), "no Prefect server was started"


def test_a_directory_that_is_not_a_model_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["stage", "cold_start", str(REPO / "configs/tiny.yaml"), "--policy", "empty"])
    assert result.exit_code == 2 and "--policy: empty is a directory without a config.json" in result.output


@pytest.mark.parametrize("args, message", [
    (["stage", "warmup", "--from", "x"], "unknown stage 'warmup'; choose from"),
    (["stage", "sft"], "sft: needs policy (--policy …)"),
    (["stage", "cold_start", "--teacher", "x"], "cold_start: unknown input(s) ['teacher']; it takes ['policy']"),
    (["stage", "base", "--from", "x"], "base: takes no input, so --from has nothing to set"),
])
def test_stage_input_mistakes(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_stages_lists_every_stage_with_its_inputs():
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith("sft "))
    assert "inputs: policy, dataset?" in line


def test_server_status_without_servers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["server", "status"])
    assert result.exit_code == 0 and result.output.split() == ["prefect", "stopped", "mlflow", "stopped"]


def test_worker_and_deploy_need_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for command in ("worker", "deploy"):
        result = runner.invoke(app, [command])
        assert result.exit_code == 2 and "no Prefect server: run `r1flow server start`" in result.output


def test_a_busy_port_is_named(tmp_path, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["server", "start", "mlflow", "--mlflow-port", str(port)])
    assert result.exit_code == 2 and f"mlflow: port {port} on 127.0.0.1 is in use" in result.output
    assert not list((tmp_path / ".r1flow" / "servers").glob("*.json"))


def test_flow_runs_send_heartbeats_to_a_configured_server_only(monkeypatch):
    """A private server stops with its command, so its flow runs send no heartbeats (the thread's join
    cost every command up to a second); a configured server keeps Prefect's default."""
    import contextlib

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    import flows.cli as cli
    import tasks.private_server

    @contextlib.contextmanager
    def fake_server(while_starting=None):
        while_starting()
        yield "http://127.0.0.1:1/api"

    monkeypatch.setattr(tasks.private_server, "private_prefect_server", fake_server)
    default = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    assert default is not None
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with cli.prefect_api(lambda: "prepared") as prepared:
        assert prepared == "prepared" and PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
    assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with cli.prefect_api(lambda: "prepared"):
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default
