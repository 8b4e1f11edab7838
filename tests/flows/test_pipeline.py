"""The tiny recipe's reasoning stages on the real Prefect engine, MLflow store and DVC: what a user relies on.

The module trains one project once (`trained`); every test stands alone on top of it (any one
can run by itself with -k). Tests that change data restore it afterwards, and each config change
uses a value no other test uses, so no test depends on another's order or leftovers. (The stages
after reasoning RL are covered by test_outline.py.)
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.io import digest_path
from tasks.console import summary_table
from tasks.recipe import load_recipe
from tests.conftest import make_project

STAGES = ["base", "cold_start", "cold_start_rl", "rejection_sampling", "sft", "reasoning_rl"]
ONLY_REASONING = f"run.stages=[{','.join(STAGES)}]"
EVALUATED = [s for s in STAGES if s != "rejection_sampling"]
ALL = STAGES + [f"evaluate/{s}" for s in EVALUATED]
DATA = "data-tiny"  # the tiny recipe's own data version (data-tiny.dvc)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    folder = make_project(tmp_path_factory.mktemp("proj"))
    old = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


def run_pipeline(project: Path, *overrides: str):
    """Run the flow; returns (report, {task label: Prefect state name}, parent MLflow run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import r1_pipeline

    recipe = load_recipe(project / "configs/tiny.yaml", [ONLY_REASONING, *overrides])
    state = r1_pipeline(recipe, str(project), return_state=True)
    report = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    states = {r.name: r.state.name for r in runs if not r.name.startswith("data_task")}
    parent = MlflowClient().get_run(report["parent_run_id"])
    assert parent.data.tags["prefect.flow_run_id"] == str(flow_run.id)
    report["flow_run_name"] = flow_run.name
    return report, states, parent


@pytest.fixture(scope="module")
def trained(project):
    return run_pipeline(project)


@contextlib.contextmanager
def data_edit(project: Path, name: str):
    """Drop the last row of <data dir>/<name>, record it with `dvc add`; restore both afterwards."""
    path = project / DATA / name
    original = path.read_text()
    path.write_text("".join(original.splitlines(keepends=True)[:-1]))
    dvc = lambda: subprocess.run([sys.executable, "-m", "dvc", "add", "-q", DATA], cwd=project, check=True)  # noqa
    dvc()
    try:
        yield
    finally:
        path.write_text(original)
        dvc()


def children(parent) -> dict:
    runs = MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def test_first_run_trains_evaluates_and_tracks_everything(project, trained):
    report, states, parent = trained
    assert states == {name: "Completed" for name in ALL}, states
    assert set(report["metrics"]) == set(EVALUATED)
    for stage in EVALUATED:
        assert 0.0 <= report["metrics"][stage]["accuracy"] <= 1.0 and report["metrics"][stage]["n"] == 24
    assert [r["label"] for r in report["stages"] if not r["evaluation_of"]] == STAGES
    # the flow's wall time splits into the stages' own work and the orchestration around it
    t = report["time"]
    assert 0 < t["compute_s"] < t["wall_s"] and t["overhead_s"] == pytest.approx(t["wall_s"] - t["compute_s"])
    assert all(r["compute_s"] > 0 for r in report["stages"])
    assert t["compute_s"] == pytest.approx(sum(r["compute_s"] for r in report["stages"]))
    stages = project / "runs" / "stages"
    assert not list(stages.glob(".ckpt-*")) and list(stages.glob("cold_start-*/model")), "checkpoints go, models stay"
    # Flow run and parent MLflow run are named after the recipe and the data version.
    dvc_md5 = (project / f"{DATA}.dvc").read_text().split("md5: ")[1].split(".dir")[0]
    assert report["flow_run_name"].startswith(f"tiny-{dvc_md5[:8]}-")
    assert parent.info.run_name == report["flow_run_name"]  # one name in the Prefect and MLflow UIs
    assert parent.data.params["cold_start.lr"] == "0.001"
    assert parent.data.tags["r1flow.data_md5"] == dvc_md5
    assert parent.data.metrics["cold_start.accuracy"] == report["metrics"]["cold_start"]["accuracy"]
    # Nested runs: one per stage, with config params, per-step metrics, dataset inputs.
    kids = children(parent)
    assert set(kids) == set(ALL)
    base = kids["base"]
    assert base.data.params["steps"] == "6"  # unprefixed: stage runs line up in the compare view
    assert base.data.tags["r1flow.data_md5"] == dvc_md5
    history = MlflowClient().get_metric_history(base.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert base.inputs.dataset_inputs[0].dataset.name == "pretrain"
    evaluation = kids["evaluate/cold_start"]
    assert evaluation.data.metrics["accuracy"] == report["metrics"]["cold_start"]["accuracy"]
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=evaluation.info.run_id, artifact_path="samples/cold_start.json")).read_text())
    assert {"prompt", "answer", "completion", "correct"} <= set(table["columns"]) and len(table["data"]) == 8
    report_md = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report/report.md")
    assert "rejection_sampling" in Path(report_md).read_text()


def test_each_trained_stage_reports_its_paired_gain_over_the_model_it_started_from(trained):
    from components.evaluation.paired import paired_gain

    report, _, parent = trained
    starts = dict(zip(EVALUATED[1:], EVALUATED[:-1]))  # cold_start over base, ..., reasoning_rl over sft
    assert {label: g["over"] for label, g in report["gains"].items()} == starts
    kids = children(parent)
    outcomes = {}
    for stage in EVALUATED:  # each evaluation logs its per-problem outcomes, in the held-out set's order
        path = mlflow.artifacts.download_artifacts(run_id=kids[f"evaluate/{stage}"].info.run_id,
                                                   artifact_path="per_problem.json")
        outcomes[stage] = json.loads(Path(path).read_text())
        assert len(outcomes[stage]["correct"]) == 24
        assert sum(outcomes[stage]["correct"]) / 24 == pytest.approx(report["metrics"][stage]["accuracy"])
    assert len({o["eval_set"] for o in outcomes.values()}) == len({o["pref_set"] for o in outcomes.values()}) == 1
    for after, before in starts.items():
        g = report["gains"][after]
        assert g["gain"] == pytest.approx(report["metrics"][after]["accuracy"] - report["metrics"][before]["accuracy"])
        assert (g["gain"], g["gain_se"], g["won"], g["lost"], g["n"]) == pytest.approx(tuple(
            paired_gain(outcomes[before]["correct"], outcomes[after]["correct"])))
        assert parent.data.metrics[f"{after}.accuracy_gain"] == pytest.approx(g["gain"])
        assert parent.data.metrics[f"{after}.accuracy_gain_se"] == pytest.approx(g["gain_se"])
        row = next(r for r in report["stages"] if r["label"] == after)
        assert (row["gain"], row["gain_over"]) == (pytest.approx(g["gain"]), before)
        # the true preference rate's gain, paired prompt by prompt on the same preference prompts
        rules = {k: o["follows_rules"] for k, o in outcomes.items()}
        assert sum(rules[after]) / len(rules[after]) == pytest.approx(report["metrics"][after]["preference_rate"])
        assert (g["preference_gain"], g["preference_gain_se"], g["preference_won"], g["preference_lost"]) == \
            pytest.approx(tuple(paired_gain(rules[before], rules[after]))[:4])
        assert parent.data.metrics[f"{after}.preference_gain_se"] == pytest.approx(g["preference_gain_se"])


def test_the_prefect_run_log_shows_each_stage_and_its_training_metrics(trained):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    _, _, parent = trained
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[parent.data.tags["prefect.flow_run_id"]])), limit=200)
    messages = [log.message for log in logs]
    for stage in STAGES:
        assert any(m.startswith(f"▶ {stage}  started") for m in messages), stage
        assert any(m.startswith(f"✔ {stage}  done in") for m in messages), stage
    assert any(m.strip().startswith("base step 2: loss") for m in messages)
    assert any("cold_start: held-out accuracy" in m for m in messages)


def test_models_are_registered_with_stage_aliases(trained):
    client = MlflowClient()
    for alias in ("base", "cold_start", "sft", "reasoning_rl"):
        version = client.get_model_version_by_alias("tiny", alias)
        assert client.get_run(version.run_id).data.tags["r1flow.stage"] == alias
        local = Path(mlflow.artifacts.download_artifacts(f"models:/tiny@{alias}"))
        assert list(local.rglob("*.safetensors")), "registered model holds safetensors weights"
        assert "license: apache-2.0" in next(local.rglob("model_card_data.yaml")).read_text()


def test_rejection_samples_are_a_content_addressed_dataset_that_sft_trains_on(trained):
    _, _, parent = trained
    kids = children(parent)
    rs, sft = kids["rejection_sampling"], kids["sft"]
    assert rs.data.metrics["kept"] > 0
    samples = Path(parent.data.tags["r1flow.output.rejection_sampling"])
    digest = digest_path(samples)
    assert samples.name == f"rejection_samples-{digest[:16]}.jsonl"
    assert rs.inputs.dataset_inputs[-1].dataset.digest == digest[:32]
    derived = [d.dataset for d in sft.inputs.dataset_inputs]
    assert derived[0].digest == digest[:32] and derived[0].name == "rejection_sampling-samples"
    assert sft.data.tags["r1flow.input.dataset"] == str(samples)


def test_second_run_executes_nothing(trained, project):
    report, states, _ = run_pipeline(project)
    assert states == {name: "Cached" for name in ALL}
    assert report["time"]["compute_s"] == 0 and report["time"]["overhead_share"] == 1.0


def test_config_change_reruns_that_stage_and_downstream_only(trained, project):
    _, states, _ = run_pipeline(project, "cold_start.lr=0.0021")
    first = ["base", "evaluate/base"]
    assert states == {**{n: "Cached" for n in first}, **{n: "Completed" for n in ALL if n not in first}}, states


def test_changed_samples_rerun_sft(trained, project):
    # (identical samples hit SFT's cache: see the rl_prompts edit below)
    _, states, _ = run_pipeline(project, "rejection_sampling.samples_per_prompt=3")
    assert states["rejection_sampling"] == "Completed" and states["sft"] == "Completed"
    assert states["cold_start"] == "Cached"


def test_editing_a_file_only_rl_stages_read_reruns_just_them(trained, project):
    # rl_prompts.jsonl is read by rejection_sampling (first 16 rows: unchanged by dropping the
    # last row, so its samples and therefore sft stay the same) and by reasoning_rl (all rows).
    with data_edit(project, "rl_prompts.jsonl"):
        _, states, _ = run_pipeline(project)
    reran = {"rejection_sampling", "reasoning_rl", "evaluate/reasoning_rl"}
    assert states == {n: ("Completed" if n in reran else "Cached") for n in ALL}, states


def test_editing_the_eval_set_reruns_only_the_evaluations(trained, project):
    with data_edit(project, "eval.jsonl"):
        report, states, _ = run_pipeline(project)
    assert states == {n: ("Completed" if n.startswith("evaluate/") else "Cached") for n in ALL}, states
    assert all(m["n"] == 23 for m in report["metrics"].values())


def test_editing_cold_start_data_reruns_its_readers_and_downstream(trained, project):
    with data_edit(project, "cold_start.jsonl"):
        _, states, _ = run_pipeline(project)
    assert states == {n: ("Cached" if n in ("base", "evaluate/base") else "Completed") for n in ALL}, states


def test_deleted_outputs_are_rebuilt_not_served_stale(trained, project):
    import shutil

    for folder in (project / "runs" / "stages").glob("cold_start-*"):
        shutil.rmtree(folder)
    _, states, _ = run_pipeline(project)
    assert states["base"] == "Cached" and states["cold_start"] == "Completed"


def test_uncommitted_data_change_is_refused(trained, project):
    path = project / DATA / "eval.jsonl"
    original = path.read_text()
    path.write_text(original + original.splitlines(keepends=True)[0])
    try:
        with pytest.raises(Exception, match=f"dvc add {DATA}"):
            run_pipeline(project)
    finally:
        path.write_text(original)


def test_rl_stages_log_rewards_and_sample_tables(trained):
    _, _, parent = trained
    run = children(parent)["reasoning_rl"]
    history = MlflowClient().get_metric_history(run.info.run_id, "reward/mean")
    assert [m.step for m in history] == [1, 2]
    tables = [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "samples")]
    assert tables == ["samples/reasoning_rl-step00002.json"]


def test_single_stage_from_a_registry_alias(trained, project):
    from flows.single_stage import r1_stage

    recipe = load_recipe(project / "configs/tiny.yaml", ["cold_start.steps=3"])
    report = r1_stage("cold_start", recipe, {"policy": "models:/tiny@base"}, str(project))
    assert set(report["metrics"]) == {"cold_start", "tiny-base"} and report["metrics"]["cold_start"]["n"] == 24
    assert report["stages"][0]["label"] == "cold_start"
    # the model it started from is scored too (a cache hit: the pipeline scored that base on the same set),
    # and the stage's gain over it is paired
    start = next(r for r in report["stages"] if r["label"] == "evaluate/tiny-base")
    assert start["status"] == "cached"
    assert report["metrics"]["tiny-base"]["accuracy"] == trained[0]["metrics"]["base"]["accuracy"]
    gain = report["gains"]["cold_start"]
    assert gain["over"] == "tiny-base" and gain["gain"] == pytest.approx(
        report["metrics"]["cold_start"]["accuracy"] - report["metrics"]["tiny-base"]["accuracy"])


def test_the_recipes_mixed_precision_reaches_the_stages_training_forwards(trained, project, monkeypatch):
    import torch

    from components.training import sft
    from flows.single_stage import r1_stage

    seen, real = [], sft.sft_loss_fn
    monkeypatch.setattr(sft, "sft_loss_fn", lambda model, batch: seen.append(torch.is_autocast_enabled("cpu"))
                        or real(model, batch))
    recipe = load_recipe(project / "configs/tiny.yaml", ["cold_start.steps=2", "model.mixed_precision=bf16"])
    report = r1_stage("cold_start", recipe, {"policy": "models:/tiny@base"}, str(project))
    assert len(seen) == 2 and all(seen), "every training forward of the stage ran under bf16 autocast"
    assert report["metrics"]["cold_start"]["n"] == 24


def test_sft_stage_on_user_data_from_a_local_model(trained, project):
    from flows.single_stage import r1_stage

    model_dir = next((project / "runs" / "stages").glob("cold_start-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml", [f"sft.source={DATA}/cold_start.jsonl"])
    report = r1_stage("sft", recipe, {"policy": str(model_dir)}, str(project))
    assert "sft" in report["metrics"] and report["gains"]["sft"]["n"] == 24
    run = MlflowClient().get_run(report["stages"][0]["run_id"])
    assert run.inputs.dataset_inputs[0].dataset.name == "sft_source"


def test_rejection_sampling_that_keeps_nothing_fails_clearly(trained, project):
    from flows.single_stage import r1_stage

    model_dir = next((project / "runs" / "stages").glob("base-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml", ["rejection_sampling.accept_score=2"])
    with pytest.raises(ValueError, match="rejection_sampling: no sample passed the filters"):
        r1_stage("rejection_sampling", recipe, {"policy": str(model_dir)}, str(project))


def test_sft_without_a_dataset_or_source_fails_clearly_and_leaves_no_result(trained, project):
    from flows.single_stage import r1_stage

    model_dir = next((project / "runs" / "stages").glob("cold_start-*/model"))
    recipe = load_recipe(project / "configs/tiny.yaml", ["sft.lr=0.0033"])
    with pytest.raises(ValueError, match="sft: needs a dataset"):
        r1_stage("sft", recipe, {"policy": str(model_dir)}, str(project))
    done = [d for d in (project / "runs" / "stages").glob("sft-*") if (d / "result.json").exists()]
    assert all(json.loads((d / "result.json").read_text())["key"] for d in done)
    failed = MlflowClient().search_runs([mlflow.get_experiment_by_name("r1flow-tiny").experiment_id],
                                        filter_string="tags.`r1flow.stage` = 'sft' and params.`lr` = '0.0033'")
    assert failed and failed[0].info.status == "FAILED"


def test_runs_line_up_for_comparison_and_the_final_model_is_offered_to_the_champion_gate(trained):
    report, _, parent = trained
    client = MlflowClient()
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    for run in [parent, *children(parent).values()]:
        tags = run.data.tags
        assert tags["r1flow.recipe"] == "tiny" and tags["r1flow.pid"] == str(os.getpid())
        assert tags["r1flow.kind"] == ("pipeline" if run is parent else
                                       "evaluation" if run.info.run_name.startswith("evaluate/") else "stage")
    # the parent holds one accuracy key per evaluated stage: the columns to compare pipeline runs on
    assert {f"{s}.accuracy" for s in EVALUATED} <= set(parent.data.metrics)
    final = next(r["output"] for r in report["stages"] if r["label"] == "reasoning_rl")  # models:/tiny/N
    assert report["champion"]["candidate"] == final.removeprefix("models:/")
    assert parent.data.tags["r1flow.champion.decision"] == report["champion"]["decision"] == "promoted"
    version = client.get_model_version("tiny", final.rsplit("/", 1)[1])
    assert float(version.tags["r1flow.heldout.accuracy"]) == report["metrics"]["reasoning_rl"]["accuracy"]


def test_the_evaluation_flow_fans_out_on_the_recipes_task_runner(trained, project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.evaluate import r1_evaluate

    # (evaluate.table_rows=5: a setting no other test uses, else the pipeline's own evaluations are cache hits)
    recipe = load_recipe(project / "configs/tiny.yaml", ["runner.task_runner=threads", "runner.max_workers=2",
                                                         "evaluate.table_rows=5"])
    state = r1_evaluate(["models:/tiny@cold_start", "models:/tiny@sft"], recipe, str(project), return_state=True)
    report = state.result()
    assert set(report["metrics"]) == {"tiny-cold_start", "tiny-sft"}
    assert all(m["n"] == 24 for m in report["metrics"].values())
    # the second model against the first (the baseline), problem by problem
    gain = report["gains"]["tiny-sft"]
    assert gain["over"] == "tiny-cold_start" and gain["n"] == 24
    assert gain["gain"] == pytest.approx(report["metrics"]["tiny-sft"]["accuracy"]
                                         - report["metrics"]["tiny-cold_start"]["accuracy"])
    assert gain["gain"] == pytest.approx((gain["won"] - gain["lost"]) / 24)
    assert gain["gain_se"] == pytest.approx(((gain["won"] + gain["lost"] - 24 * gain["gain"] ** 2) / (24 * 23)) ** 0.5)
    row = next(r for r in report["stages"] if r["label"] == "evaluate/tiny-sft")
    assert row["gain_over"] == "tiny-cold_start" and "gain (paired)" in summary_table(report["stages"])
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))) if r.name.startswith("evaluate/")]
    assert len(runs) == 2 and all(r.state.name == "Completed" for r in runs)
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert second.start_time < first.end_time, "the two evaluations ran side by side"


def test_a_dataset_source_is_read_from_its_test_split_for_evaluation_with_its_columns_renamed(trained, project,
                                                                                              tmp_path):
    """A DatasetDict source (as a hub dataset arrives): evaluation reads `test` unless told otherwise,
    and `columns` renames before the schema applies."""
    import datasets

    from flows.evaluate import r1_evaluate

    rows = [json.loads(line) for line in (project / DATA / "eval.jsonl").read_text().splitlines()]
    as_hub = [{"question": r["prompt"], "answer": r["answer"]} for r in rows]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(as_hub[:3]),
                          "test": datasets.Dataset.from_list(as_hub[3:10])}).save_to_disk(str(tmp_path / "dd"))
    source = f"{{path: {tmp_path / 'dd'}, columns: {{question: prompt}}}}"
    report = r1_evaluate(["models:/tiny@sft"], load_recipe(project / "configs/tiny.yaml",
                                                           [f"evaluate.source={source}"]), str(project))
    assert report["metrics"]["tiny-sft"]["n"] == 7, "the test split's 7 rows"
    report = r1_evaluate(["models:/tiny@sft"], load_recipe(project / "configs/tiny.yaml", [
        f"evaluate.source={{path: {tmp_path / 'dd'}, split: train, columns: {{question: prompt}}}}"]), str(project))
    assert report["metrics"]["tiny-sft"]["n"] == 3, "split: train"


def test_models_latest_is_pinned_to_the_newest_version_when_named(trained):
    from tasks.tracking import resolve_latest

    versions = [int(v.version) for v in MlflowClient().search_model_versions("name = 'tiny'")]
    assert resolve_latest("models:/tiny/latest") == f"models:/tiny/{max(versions)}"
    assert resolve_latest("models:/tiny@sft") == "models:/tiny@sft" and resolve_latest("runs:/x/m") == "runs:/x/m"
    with pytest.raises(ValueError, match="--policy: cannot fetch models:/nope/latest: no registered model 'nope'"):
        resolve_latest("models:/nope/latest", "policy")
