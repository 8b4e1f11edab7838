"""The tiny recipe's whole R1 outline on the real Prefect engine and MLflow store: reward models,
alignment (and the side-by-side comparison), distillation and its control, TTS evaluation.

One project is trained once (`trained`); every test reads what that run recorded, or reruns a
stage with a setting no other test uses.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.recipe import load_recipe
from tests.conftest import make_project

LATE = ["reward_model", "process_reward_model", "alignment", "student_base", "distill", "distill_control",
        "tts_eval", "tts_eval/student"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    folder = make_project(tmp_path_factory.mktemp("outline"))
    old = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


def run(project: Path, *overrides: str):
    from flows.pipeline import r1_pipeline

    recipe = load_recipe(project / "configs/tiny.yaml", list(overrides))
    state = r1_pipeline(recipe, str(project), return_state=True)
    report = state.result()
    return report, MlflowClient().get_run(report["parent_run_id"])


@pytest.fixture(scope="module")
def trained(project):
    return run(project, "alignment.compare=[dpo, oreo]")


def stage_runs(parent) -> dict:
    runs = MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def artifact(run_id: str, path: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def test_every_stage_of_the_outline_runs_in_order(trained):
    report, _ = trained
    labels = [r["label"] for r in report["stages"] if not r["evaluation_of"]]
    assert [x for x in labels if x in LATE] == LATE, labels
    assert {"alignment/dpo", "alignment/oreo"} <= set(labels)  # the comparison's methods, from the same inputs
    assert {"alignment", "student_base", "distill", "distill_control"} <= set(report["metrics"])


def test_a_fanned_out_stage_reports_its_own_time_not_its_wait_in_the_queue(trained, project):
    # the compared methods are submitted together to a one-worker runner: oreo waited for the
    # others, and its row must show the time its task recorded (+ its evaluation), not the wait
    report, _ = trained
    rows = {r["label"]: r for r in report["stages"]}
    row, evaluation = rows["alignment/oreo"], rows["evaluate/alignment/oreo"]
    recorded = next(json.loads(p.read_text()) for p in (project / "runs" / "stages").glob("alignment-*/result.json")
                    if json.loads(p.read_text())["run_id"] == row["run_id"])
    assert row["status"] == "ran" and recorded["wall_s"] >= recorded["compute_s"] > 0
    assert row["seconds"] == pytest.approx(recorded["wall_s"] + evaluation["seconds"])


def test_every_evaluated_model_reports_the_true_preference_rate(trained):
    report, _ = trained
    for label, metrics in report["metrics"].items():
        assert 0.0 <= metrics["preference_rate"] <= 1.0 and metrics["preference_n"] == 12, label
        assert {"preference_rate_marked", "preference_rate_redundant", "preference_rate_plain"} <= set(metrics)


def test_reward_models_pass_their_gate_and_are_registered_with_their_kind(trained):
    _, parent = trained
    runs = stage_runs(parent)
    for stage in ("reward_model", "process_reward_model"):
        assert runs[stage].data.metrics["gate/passed"] == 1.0
        version = MlflowClient().get_model_version_by_alias("tiny", stage)
        assert version.run_id == runs[stage].info.run_id
    assert "heldout/accuracy" in runs["reward_model"].data.metrics
    assert runs["process_reward_model"].data.metrics["labels/steps"] > 0


def test_alignment_records_kl_and_reward_model_score_and_the_comparison_is_logged(trained):
    report, parent = trained
    runs = stage_runs(parent)
    summary = runs["alignment"].data.metrics
    assert summary["final/kl"] >= 0 and "final/rm_score" in summary and "final/rm_score_before" in summary
    table = artifact(parent.info.run_id, "comparison/alignment.md").read_text()
    assert "dpo" in table and "oreo" in table
    rows = json.loads(artifact(parent.info.run_id, "comparison/alignment.json").read_text())
    by_method = {r[0]: dict(zip(rows["columns"], r)) for r in rows["data"]}
    assert by_method["dpo"]["tokens_generated"] == 0  # learns from the curated pairs alone
    assert by_method["oreo"]["tokens_generated"] > 0  # its offline trajectories are the policy's own samples
    starts = {round(r["rm_score"] - r["rm_score_change"], 5) for r in by_method.values()}
    assert len(starts) == 1, "every method is scored against the same starting policy's greedy answers"
    for method, row in by_method.items():  # the house-rules gain's error paired prompt by prompt, as the pipeline's
        gain = report["gains"][f"alignment/{method}"]
        assert row["paired"] and row["preference_gain"] == pytest.approx(100 * gain["preference_gain"])
        assert row["preference_gain_se"] == pytest.approx(100 * gain["preference_gain_se"])
    assert artifact(parent.info.run_id, "comparison/alignment_comparison.png").stat().st_size > 1000
    assert "alignment_comparison.png" in artifact(parent.info.run_id, "report/report.md").read_text()


def test_distillation_measures_sizes_and_speed_against_its_teacher(trained):
    _, parent = trained
    metrics = stage_runs(parent)["distill"].data.metrics
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    assert metrics["parameter_ratio"] == pytest.approx(metrics["student_parameters"] / metrics["teacher_parameters"])
    assert metrics["student_tokens_per_s"] > 0 and metrics["teacher_tokens_per_s"] > 0


def test_tts_evaluation_logs_cells_the_plot_and_the_report_shows_it(trained):
    _, parent = trained
    runs = stage_runs(parent)
    for label in ("tts_eval", "tts_eval/student"):
        metrics = runs[label].data.metrics
        assert {"greedy/n1/accuracy", "self_consistency/n2/tokens", "best_of_n/n2/verifier_calls"} <= set(metrics)
        assert metrics["best_of_n/n2/verifier_calls"] == 2  # scored by the PRM's last step: one call per sample
        assert artifact(runs[label].info.run_id, "tts/accuracy_vs_tokens.png").stat().st_size > 1000
    summary = json.loads(artifact(runs["tts_eval"].info.run_id, "tts/summary.json").read_text())
    assert {r["strategy"] for r in summary["rows"]} == {"greedy", "self_consistency", "best_of_n"}
    report = artifact(parent.info.run_id, "report/report.md").read_text()
    assert "![accuracy_vs_tokens.png]" in report


def test_a_second_run_is_all_cache_hits_and_reclaims_the_stage_aliases(trained, project):
    client = MlflowClient()
    runs = stage_runs(trained[1])
    own = client.get_model_version_by_alias("tiny", "alignment").version
    # the pipeline's aligned model holds the stage alias; a compared variant has its own
    assert client.get_model_version_by_alias("tiny", "alignment").run_id == runs["alignment"].info.run_id
    assert client.get_model_version_by_alias("tiny", "alignment-oreo").run_id == runs["alignment/oreo"].info.run_id
    # an experiment (`r1flow stage alignment --set …`) moved the alias to another model
    client.set_registered_model_alias("tiny", "alignment", client.get_model_version_by_alias("tiny", "base").version)
    report, _ = run(project, "alignment.compare=[dpo, oreo]")
    assert {r["status"] for r in report["stages"]} == {"cached"}
    assert client.get_model_version_by_alias("tiny", "alignment").version == own


def test_a_run_of_another_name_that_hits_the_cache_registers_the_models_under_its_name(trained, project):
    """The stage cache is shared by a project's recipes: a run under another `run.name` whose stages are
    all cache hits still names every model it used under its own name (the same artifacts registered
    again, once, with their held-out tags), so its aliases and its champion are its own."""
    client = MlflowClient()
    report, _ = run(project, "alignment.compare=[dpo, oreo]", "run.name=tiny_again")
    assert {r["status"] for r in report["stages"]} == {"cached"}
    for alias in ("base", "sft", "reasoning_rl", "reward_model", "alignment", "alignment-oreo", "distill"):
        theirs, ours = (client.get_model_version_by_alias(n, alias) for n in ("tiny", "tiny_again"))
        assert (ours.source, ours.run_id) == (theirs.source, theirs.run_id), alias
    aligned = client.get_model_version_by_alias("tiny_again", "alignment")
    assert "r1flow.heldout.accuracy" in aligned.tags
    assert report["champion"]["decision"] == "promoted"
    assert client.get_model_version_by_alias("tiny_again", "champion").version == aligned.version
    versions = len(client.search_model_versions("name='tiny_again'"))
    run(project, "alignment.compare=[dpo, oreo]", "run.name=tiny_again")  # registered once, not per run
    assert len(client.search_model_versions("name='tiny_again'")) == versions


def test_a_reward_model_below_its_gate_stops_the_flow_and_nothing_downstream_runs(trained, project):
    # pairs whose order contradicts itself: no model can be right on most held-out ones
    pairs = project / "contradictory.jsonl"
    rows = [{"prompt": f"{a}+{a}", "chosen": f"<answer>{a}</answer>", "rejected": f"<answer>{a + 1}</answer>"}
            for a in range(30)]
    rows += [{"prompt": f"{a}*{a}", "chosen": f"<answer>{a + 1}</answer>", "rejected": f"<answer>{a}</answer>"}
             for a in range(30)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(Exception, match="reward model quality gate failed: heldout/accuracy = .* < "
                                        "reward_model.min_accuracy = 0.9000; the model is not registered"):
        run(project, f"reward_model.source={pairs}", "reward_model.min_accuracy=0.9",
            "reward_model.heldout_fraction=0.5")
    failed = MlflowClient().search_runs([trained[1].info.experiment_id], order_by=["start_time DESC"], max_results=1)
    assert failed[0].data.tags["r1flow.stage"] == "reward_model" or failed[0].info.status == "FAILED"
    latest = MlflowClient().get_model_version_by_alias("tiny", "reward_model")
    assert latest.run_id == stage_runs(trained[1])["reward_model"].info.run_id, "the failed model is not registered"


def test_the_tts_flow_runs_one_cached_task_per_model_strategy_and_budget(trained, project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.tts import r1_tts

    recipe = load_recipe(project / "configs/tiny.yaml", ["tts_eval.cells=[{strategy: greedy, budgets: [1]}, "
                                                         "{strategy: best_of_n, budgets: [1, 2]}]"])
    models = ["models:/tiny@alignment", "models:/tiny@distill"]
    state = r1_tts(models, recipe, "models:/tiny@process_reward_model", "", str(project), return_state=True)
    report = state.result()
    cells = {(r["model"], r["strategy"], r["budget"]) for r in report["tts"]}
    assert cells == {(m, s, b) for m in ("tiny-alignment", "tiny-distill")
                     for s, b in (("greedy", 1), ("best_of_n", 1), ("best_of_n", 2))}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    assert len([r for r in runs if r.name.startswith("tts/")]) == 6
    parent = MlflowClient().get_run(report["parent_run_id"])
    assert "| tiny-distill | best_of_n | 2 |" in artifact(parent.info.run_id, "tts/grid.md").read_text()
    assert artifact(parent.info.run_id, "tts/accuracy_vs_tokens.png").stat().st_size > 1000
    # the same grid again is all cache hits; one more budget runs only what is new
    again = r1_tts(models, load_recipe(project / "configs/tiny.yaml", [
        "tts_eval.cells=[{strategy: greedy, budgets: [1]}, {strategy: best_of_n, budgets: [1, 2, 3]}]"]),
        "models:/tiny@process_reward_model", "", str(project))
    ran = [r["label"] for r in again["stages"] if r["status"] == "ran"]
    assert sorted(ran) == ["tts/tiny-alignment/best_of_n/n3", "tts/tiny-distill/best_of_n/n3"]


def test_averaging_with_the_start_keeps_that_fraction_of_the_aligned_change(trained, project):
    # the outline's DPO run again, its weights then averaged halfway back to the reasoner it started from
    import torch
    from safetensors.torch import load_file

    stages = load_recipe(project / "configs/tiny.yaml").run.stages
    stages = stages[:stages.index("alignment") + 1]
    report, parent = run(project, "alignment.average_with_start=0.5", f"run.stages=[{', '.join(stages)}]")
    before, after = ({r["label"]: r for r in rep["stages"]} for rep in (trained[0], report))
    assert after["alignment"]["status"] == "ran" and after["reasoning_rl"]["status"] == "cached"
    start, aligned, averaged = (load_file(Path(mlflow.artifacts.download_artifacts(r["output"])) / "model"
                                          / "model.safetensors")
                                for r in (before["reasoning_rl"], before["alignment"], after["alignment"]))
    moved = 0
    for name, w0 in start.items():
        torch.testing.assert_close(averaged[name], w0 + 0.5 * (aligned[name] - w0))
        moved += not torch.equal(aligned[name], w0)
    assert moved > 0
    assert stage_runs(parent)["alignment"].data.metrics["final/average_with_start"] == 0.5


def test_a_pruned_student_base_is_cut_out_of_the_teachers_base(trained, project):
    """`student_base.init: prune`: the student starts as the base's most important channels, heads,
    neurons and layers (trained here at a negligible rate, so what it holds is the cut itself), and
    the distillation downstream runs from it."""
    import torch
    from safetensors.torch import load_file

    stages = load_recipe(project / "configs/tiny.yaml").run.stages
    stages = stages[:stages.index("distill") + 1]
    report, parent = run(project, "student_base.init=prune", "student_base.lr=1e-12",
                         "student_base.arch={hidden_size: 16, num_heads: 1, num_layers: 1, intermediate_size: 32}",
                         f"run.stages=[{', '.join(stages)}]")
    rows = {r["label"]: r for r in report["stages"]}
    assert rows["student_base"]["status"] == "ran" and rows["distill"]["status"] == "ran"
    assert rows["base"]["status"] == "cached"
    base, student = (load_file(Path(mlflow.artifacts.download_artifacts(rows[s]["output"])) / "model"
                               / "model.safetensors") for s in ("base", "student_base"))
    embed, cut = base["model.embed_tokens.weight"], student["model.embed_tokens.weight"]
    assert cut.shape == (embed.shape[0], 16)
    columns = [next(i for i in range(embed.shape[1]) if torch.allclose(cut[:, j], embed[:, i], atol=1e-6))
               for j in range(16)]
    assert columns == sorted(set(columns)), "16 distinct teacher channels, in the teacher's order"
    assert student["model.layers.0.self_attn.q_proj.weight"].shape == (16, 16)  # one whole head of width 16
    assert "model.layers.1.mlp.up_proj.weight" not in student
    assert stage_runs(parent)["student_base"].data.params["init"] == "prune"
