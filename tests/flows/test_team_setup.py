"""The team set-up, for real on loopback: servers, deployments, a worker, `r1flow serve`, the MLflow UI.

One module-scoped project runs `r1flow server start` (Prefect and MLflow on free ports), `r1flow
deploy` (prefect.yaml) and `r1flow worker`; the tests trigger deployment runs of the tiny recipe
through the Prefect API and read what happened back from both servers. The last test stops
everything and checks that no process, port, state file or database lock is left.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tasks.recipe import load_recipe
from tests.conftest import make_project
from tests.ops import alive, browse, chromium, cli, listening, spawn, sqlite_unlocked, stop_tree, user_env, wait_for

STAGES = ["base", "cold_start", "cold_start_rl", "rejection_sampling", "sft", "reasoning_rl"]
REASONING = f"run.stages=[{','.join(STAGES)}]"  # the team path is the same for every stage: keep the runs short
EVALUATED = [s for s in STAGES if s != "rejection_sampling"]
ALL = STAGES + [f"evaluate/{s}" for s in EVALUATED]
RUN_TIMEOUT = 900  # a deployment run of the tiny recipe: ~1-2 min alone, more on a loaded 2-core machine


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    from tasks.servers import free_port

    project = make_project(tmp_path_factory.mktemp("team"))
    ports = {"prefect": free_port(), "mlflow": free_port()}
    out = cli(project, "server", "start", "--prefect-port", str(ports["prefect"]), "--mlflow-port",
              str(ports["mlflow"]), timeout=400).stdout
    started = {name: json.loads((project / ".r1flow" / "servers" / f"{name}.json").read_text())
               for name in ("prefect", "mlflow")}
    team = {"project": project, "ports": ports, "started": started, "procs": [], "start_output": out,
            "api": f"http://127.0.0.1:{ports['prefect']}/api", "mlflow": f"http://127.0.0.1:{ports['mlflow']}"}
    try:
        cli(project, "deploy", timeout=300)
        worker = spawn(project, project / "worker.log", "worker")
        team["procs"].append(("worker", worker))
        yield team
    finally:
        for _, proc in team["procs"]:
            stop_tree(proc)
        cli(project, "server", "stop", check=False)


def run_deployment(team: dict, name: str, parameters: dict):
    """Trigger deployment `name` through the API, wait for it; returns (flow run, {task: state})."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment as trigger
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team["api"]}):
        flow_run = trigger(name, parameters=parameters, timeout=RUN_TIMEOUT, poll_interval=2)
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.state.is_completed(), f"{name}: {flow_run.state}\n{_logs(team)}"
    return flow_run, {t.name: t.state.name for t in tasks if not t.name.startswith("data_task")}


def _logs(team: dict) -> str:
    log = team["project"] / "worker.log"
    return log.read_text()[-4000:] if log.exists() else ""


def tiny(team: dict, *overrides: str) -> dict:
    return {"recipe": load_recipe(team["project"] / "configs/tiny.yaml", [REASONING, *overrides]).model_dump(mode="json"),
            "root": str(team["project"])}


@pytest.fixture(scope="module")
def deployed_run(team):
    return run_deployment(team, "r1_pipeline/default", tiny(team))


def test_server_start_says_where_the_servers_listen_and_the_ui_calls_that_port(team):
    ports = team["ports"]
    assert f"http://127.0.0.1:{ports['prefect']}" in team["start_output"]
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{ports['mlflow']}" in team["start_output"]
    settings = httpx.get(f"http://127.0.0.1:{ports['prefect']}/ui-settings", timeout=10).json()
    assert settings["api_url"] == team["api"]  # not :4200
    assert httpx.get(f"{team['mlflow']}/health", timeout=10).text == "OK"
    status = cli(team["project"], "server", "status").stdout
    assert f"prefect  running  http://127.0.0.1:{ports['prefect']}" in status


def test_deployments_carry_the_typed_recipe_and_the_pipeline_a_cron_schedule(team):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team["api"]}), get_client(sync_client=True) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
    assert set(deployments) >= {"r1_pipeline/default", "r1_stage/default", "r1_evaluate/default"}
    pipeline = deployments["r1_pipeline/default"]
    assert [s.schedule.cron for s in pipeline.schedules] == ["0 3 * * *"]
    assert all(d.work_pool_name == "r1flow" for d in deployments.values())
    # The UI's run form is built from this schema: the recipe's sections, one per stage.
    recipe = pipeline.parameter_openapi_schema["definitions"]["Recipe"]["properties"]
    assert {"run", "data", "model", "runner", "base", "cold_start", "sft", "reasoning_rl", "evaluate"} <= set(recipe)
    assert pipeline.parameters["recipe"]["run"]["name"] == "default"
    stage = deployments["r1_stage/default"].parameter_openapi_schema["properties"]
    assert {"stage", "inputs", "recipe", "root"} <= set(stage)


def test_a_deployment_run_through_a_worker_trains_every_stage_and_tracks_it_on_the_server(team, deployed_run):
    flow_run, states = deployed_run
    assert states == {name: "Completed" for name in ALL}, states
    client = MlflowClient(tracking_uri=team["mlflow"])
    experiment = client.get_experiment_by_name("r1flow-tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run.id}' "
                                "and tags.`r1flow.kind` = 'pipeline'")[0]
    assert parent.info.run_name == flow_run.name and parent.info.status == "FINISHED"
    kids = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.info.run_name for r in kids} == set(ALL)
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert client.get_model_version_by_alias("tiny", "champion").tags["r1flow.heldout.set"]
    assert parent.data.tags["r1flow.champion.decision"] in ("promoted", "kept")


def test_after_dvc_add_of_changed_data_the_deployment_reruns_only_what_reads_it(team, deployed_run):
    project = team["project"]
    path = project / "data-tiny" / "eval.jsonl"
    original = path.read_text()
    dvc_add = lambda: subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data-tiny"], cwd=project,  # noqa
                                     check=True, env=user_env())
    path.write_text("".join(original.splitlines(keepends=True)[:-1]))
    dvc_add()
    try:
        _, states = run_deployment(team, "r1_pipeline/default", tiny(team))
    finally:
        path.write_text(original)
        dvc_add()
    assert states == {n: ("Completed" if n.startswith("evaluate/") else "Cached") for n in ALL}, states


def test_the_evaluation_deployment_scores_registered_models(team, deployed_run):
    params = tiny(team) | {"models": ["models:/tiny@cold_start", "models:/tiny@reasoning_rl"]}
    flow_run, states = run_deployment(team, "r1_evaluate/default", params)
    assert set(states) == {"evaluate/tiny-cold_start", "evaluate/tiny-reasoning_rl"}
    assert set(states.values()) <= {"Completed", "Cached"}


def test_r1flow_serve_runs_a_deployment_triggered_through_the_api(team, deployed_run):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = team["project"]
    served = spawn(project, project / "serve.log", "serve", "configs/tiny.yaml", "--set", REASONING, "--name", "served")
    team["procs"].append(("serve", served))

    def registered():
        with temporary_settings({PREFECT_API_URL: team["api"]}), get_client(sync_client=True) as client:
            return any(d.name == "served" for d in client.read_deployments())
    wait_for(registered, 300, "r1flow serve to register its deployment")
    _, states = run_deployment(team, "r1_pipeline/served", {})  # the parameters serve was given
    assert states == {name: "Cached" for name in ALL}, states  # same recipe and data: nothing reruns


def needs_chromium() -> None:
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("no chromium (apt-get install -y chromium)")


def test_the_prefect_ui_shows_the_recipe_as_a_form_of_sections(team, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    needs_chromium()
    with temporary_settings({PREFECT_API_URL: team["api"]}), get_client(sync_client=True) as client:
        (deployment,) = [d for d in client.read_deployments() if client.read_flow(d.flow_id).name == "r1_pipeline"
                         and d.name == "default"]
    form = browse(f"http://127.0.0.1:{team['ports']['prefect']}/deployments/deployment/{deployment.id}/run", tmp_path)
    for section in ("Run", "Data", "Model", "Runner", "Cold Start", "Reasoning Rl", "Evaluate"):
        assert f">{section} (Optional)<" in form, section


def test_the_mlflow_ui_shows_the_stage_runs_side_by_side_and_their_loss_curves(team, deployed_run, tmp_path):
    needs_chromium()
    flow_run, _ = deployed_run
    client = MlflowClient(tracking_uri=team["mlflow"])
    experiment = client.get_experiment_by_name("r1flow-tiny").experiment_id
    runs = client.search_runs([experiment], f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    parent = next(r for r in runs if r.data.tags["r1flow.kind"] == "pipeline")
    stages = {r.info.run_name: r.info.run_id for r in runs if r.data.tags["r1flow.kind"] == "stage"}
    trained = [s for s in STAGES if s != "rejection_sampling"]
    # The experiment page opens on the runs table (the training view), listing the pipeline run.
    page = browse(f"{team['mlflow']}/#/experiments/{experiment}?workflowType=machine_learning", tmp_path)
    assert parent.info.run_name in page and "matching runs" in page
    # The comparison of the stage runs names each stage and the metrics they share.
    ids = quote(json.dumps([stages[s] for s in trained]))
    shot = Path(os.environ.get("R1FLOW_SCREENSHOT", tmp_path / "compare.png"))
    compare = browse(f"{team['mlflow']}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([experiment]))}"
                     "&workflowType=machine_learning", tmp_path, screenshot=shot, size="1280,1100")
    assert f"Comparing {len(trained)} Runs" in compare
    for name in trained:
        assert f">{name}<" in compare, name
    assert ">loss<" in compare and ">lr<" in compare
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    # Charts stay placeholders in headless Chromium: check what they plot through the REST API.
    history = httpx.get(f"{team['mlflow']}/api/2.0/mlflow/metrics/get-history",
                        params={"run_id": stages["base"], "metric_key": "loss"}, timeout=30).json()["metrics"]
    assert [m["step"] for m in history] == [2, 4, 6] and all(m["value"] > 0 for m in history)


def test_server_stop_leaves_no_process_port_state_or_lock(team, deployed_run):
    import psutil

    project = team["project"]
    servers = [psutil.Process(s["pid"]) for s in team["started"].values()]
    members = [m for p in servers for m in [p, *p.children(recursive=True)]]
    for _, proc in team["procs"]:
        members += stop_tree(proc, timeout=15)  # SIGTERM, then SIGKILL what is left
    team["procs"].clear()
    out = cli(project, "server", "stop").stdout
    assert "prefect  stopped" in out and "mlflow   stopped" in out
    assert alive(members) == [], alive(members)
    assert not any(listening(p) for p in team["ports"].values())
    assert not list((project / ".r1flow" / "servers").glob("*.json"))
    assert sqlite_unlocked(project / "mlflow.db") and sqlite_unlocked(project / ".r1flow" / "prefect" / "prefect.db")
    assert "stopped" in cli(project, "server", "status").stdout
    shutil.rmtree(project / ".r1flow" / "servers")
