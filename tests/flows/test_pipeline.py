"""The tiny recipe on the real Prefect engine, MLflow store and DVC: what a user relies on.

One project is shared by the tests in this module and they run in file order: a first run
trains everything, a second run is all cache hits, then a config change and a data change
rerun exactly the stages they reach.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.config import load_recipe
from tests.conftest import make_project

STAGES = ["base", "cold_start", "cold_start_rl", "reasoning_rl"]
ALL = [name for stage in STAGES for name in (stage, f"evaluate/{stage}")]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    folder = make_project(tmp_path_factory.mktemp("proj"))
    old = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


def run_pipeline(project: Path, *overrides: str):
    """Run the flow; returns (metrics, {task label: Prefect state name}, parent MLflow run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import r1_pipeline

    recipe = load_recipe(project / "configs/tiny.yaml", list(overrides)).model_dump(mode="json")
    state = r1_pipeline(recipe, str(project), return_state=True)
    metrics = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    states = {r.name: r.state.name for r in runs if not r.name.startswith("data_task")}
    parent = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("r1flow-tiny").experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'")
    return metrics, states, [r for r in parent if "mlflow.parentRunId" not in r.data.tags][0]


def children(parent) -> dict:
    runs = MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def test_first_run_trains_evaluates_and_tracks_everything(project):
    metrics, states, parent = run_pipeline(project)
    assert states == {name: "Completed" for name in ALL}, states
    assert set(metrics) == set(STAGES)
    for stage in metrics:
        assert 0.0 <= metrics[stage]["accuracy"] <= 1.0
        assert metrics[stage]["n"] == 24
    # Parent run: resolved recipe as params, lineage tags, stage metrics.
    assert parent.data.params["cold_start.lr"] == "0.001"
    dvc_md5 = (project / "data.dvc").read_text().split("md5: ")[1].split(".dir")[0]
    assert parent.data.tags["r1flow.data_md5"] == dvc_md5 + ".dir"
    assert parent.data.metrics["cold_start.accuracy"] == metrics["cold_start"]["accuracy"]
    # Nested runs: one per stage, with config params, per-step metrics, dataset inputs.
    kids = children(parent)
    assert set(kids) == set(ALL)
    base = kids["base"]
    assert base.data.params["base.steps"] == "6"
    assert base.data.tags["r1flow.data_md5"] == dvc_md5
    assert base.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"]
    history = MlflowClient().get_metric_history(base.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    inputs = base.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "pretrain"
    evaluation = kids["evaluate/cold_start"]
    assert evaluation.data.metrics["accuracy"] == metrics["cold_start"]["accuracy"]
    artifacts = [a.path for a in MlflowClient().list_artifacts(evaluation.info.run_id, "samples")]
    assert artifacts == ["samples/cold_start.json"]
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=evaluation.info.run_id, artifact_path="samples/cold_start.json")).read_text())
    assert {"prompt", "answer", "completion", "correct"} <= set(table["columns"]) and len(table["data"]) == 8


def test_models_are_registered_with_stage_aliases(project):
    client = MlflowClient()
    for alias in ("base", "cold_start"):
        version = client.get_model_version_by_alias("tiny", alias)
        assert client.get_run(version.run_id).data.tags["r1flow.stage"] == alias
        local = Path(mlflow.artifacts.download_artifacts(f"models:/tiny@{alias}"))
        assert list(local.rglob("*.safetensors")), "registered model holds safetensors weights"


def test_second_run_executes_nothing(project):
    _, states, _ = run_pipeline(project)
    assert states == {name: "Cached" for name in ALL}


def test_config_change_reruns_that_stage_and_downstream_only(project):
    _, states, _ = run_pipeline(project, "cold_start.lr=0.002")
    assert states == {**{name: "Cached" for name in ALL[:2]}, **{name: "Completed" for name in ALL[2:]}}


def test_data_change_reruns_the_stages_that_read_it(project):
    path = project / "data" / "cold_start.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # drop one example
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=project, check=True)
    _, states, _ = run_pipeline(project, "cold_start.lr=0.002")
    assert states == {**{name: "Cached" for name in ALL[:2]}, **{name: "Completed" for name in ALL[2:]}}


def test_deleted_outputs_are_rebuilt_not_served_stale(project):
    import shutil

    for folder in (project / "runs" / "stages").glob("cold_start-*"):
        shutil.rmtree(folder)
    _, states, _ = run_pipeline(project, "cold_start.lr=0.002")
    assert states["base"] == "Cached" and states["cold_start"] == "Completed"


def test_uncommitted_data_change_is_refused(project):
    from tasks.versioning import DataVersionError

    path = project / "data" / "eval.jsonl"
    original = path.read_text()
    path.write_text(original + original.splitlines(keepends=True)[0])
    try:
        with pytest.raises(Exception, match="dvc add data"):
            run_pipeline(project, "cold_start.lr=0.002")
    finally:
        path.write_text(original)
    assert DataVersionError


def test_single_stage_from_a_registry_alias(project):
    from flows.single_stage import single_stage

    recipe = load_recipe(project / "configs/tiny.yaml", ["cold_start.steps=2"]).model_dump(mode="json")
    metrics = single_stage("cold_start", recipe, "models:/tiny@base", str(project))
    assert set(metrics) == {"cold_start"} and metrics["cold_start"]["n"] == 24


def test_rl_stages_log_rewards_and_sample_tables(project):
    _, states, parent = run_pipeline(project, "cold_start.lr=0.002")
    assert set(states.values()) == {"Cached"}
    # cached stages are not re-logged under the new parent: look the run up by its tag
    runs = MlflowClient().search_runs([parent.info.experiment_id], filter_string="tags.`r1flow.stage` = 'reasoning_rl'")
    assert runs, "reasoning_rl ran"
    history = MlflowClient().get_metric_history(runs[0].info.run_id, "reward/mean")
    assert [m.step for m in history] == [1, 2]
    tables = [a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id, "samples")]
    assert tables == ["samples/reasoning_rl-step00002.json"]


def test_sft_stage_on_user_data_from_a_local_model(project):
    from flows.single_stage import single_stage

    model_dir = next((project / "runs" / "stages").glob("cold_start-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml", ["sft.source=data/cold_start.jsonl"]).model_dump(mode="json")
    metrics = single_stage("sft", recipe, str(model_dir), str(project))
    assert set(metrics) == {"sft"}
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("r1flow-tiny").experiment_id],
                                      filter_string="tags.`r1flow.stage` = 'sft'")
    assert runs[0].inputs.dataset_inputs[0].dataset.name == "derived"


def test_rejection_sampling_that_keeps_nothing_fails_clearly(project):
    from flows.single_stage import single_stage

    model_dir = next((project / "runs" / "stages").glob("base-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml").model_dump(mode="json")
    with pytest.raises(ValueError, match="rejection_sampling: no sample passed the filters"):
        single_stage("rejection_sampling", recipe, str(model_dir), str(project))


def test_sft_without_derived_data_or_source_fails_clearly(project):
    from flows.single_stage import single_stage

    model_dir = next((project / "runs" / "stages").glob("cold_start-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml").model_dump(mode="json")
    with pytest.raises(ValueError, match="sft: needs rejection_sampling before it in run.stages, or sft.source"):
        single_stage("sft", recipe, str(model_dir), str(project))
    done = [d for d in (project / "runs" / "stages").glob("sft-*") if (d / "result.json").exists()]
    assert len(done) == 1, "only the earlier successful sft run left a result"
