"""What a user sees when a stage fails or its process is killed, and that a rerun repairs it.

- A real SIGKILL of the process running a stage, once between checkpoints and once in the middle
  of a checkpoint write (tests/flows/kill_stage.py), then a rerun through Prefect: the weights
  equal (`torch.equal`) those of an uninterrupted run, with full fine-tuning and with LoRA, and
  the MLflow runs the killed process left RUNNING are marked KILLED by the rerun.
- A stage that raises: its MLflow run is FAILED with the error as a tag, its Prefect task Failed,
  nothing is registered, and the rerun resumes from the last checkpoint.
- `kill -9` of `r1flow stage` during training: the Prefect API server it started goes too.
- SIGTERM of `r1flow stage` during training: stopped as on Ctrl-C, its MLflow runs KILLED.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tasks.recipe import load_recipe
from tests.conftest import make_project
from tests.ops import alive, spawn, stop_tree, tree, user_env, wait_for

MODES = {"full": [], "lora": ["cold_start.finetune=lora", "cold_start.lora.r=4", "cold_start.lora.alpha=8"]}
STEPS = ["cold_start.steps=6", "cold_start.ckpt_every=2", "cold_start.log_every=1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    folder = make_project(tmp_path_factory.mktemp("failures"))
    old = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(old)


@pytest.fixture(scope="module")
def policy(project, tiny_tokenizer):
    """A tiny starting model saved as a plain model directory."""
    from components.config import ArchConfig
    from components.modeling.models import build_tiny_llama, save_model

    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=64,
                      max_position_embeddings=128)
    save_model(build_tiny_llama(arch, tiny_tokenizer, seed=0), tiny_tokenizer, project / "policy")
    return str(project / "policy")


def overrides(mode: str, *extra: str) -> list[str]:
    return [*STEPS, *MODES[mode], *extra]


def stage(project: Path, policy: str, sets: list[str], **kwargs):
    """`cold_start` on `policy` through Prefect, in this process."""
    from flows.single_stage import r1_stage

    return r1_stage("cold_start", load_recipe(project / "configs/tiny.yaml", sets), {"policy": policy}, str(project),
                    **kwargs)


def model_weights(project: Path, output_dir: str) -> dict[str, torch.Tensor]:
    (model,) = (project / output_dir / "stages").glob("cold_start-*/model/model.safetensors")
    return load_file(str(model))


def killed(project: Path, policy: str, sets: list[str], mode: str, n: int) -> None:
    """Run the stage in a child process that SIGKILLs itself at (`mode`, `n`)."""
    from prefect.settings import PREFECT_API_URL

    args = ["stage", "cold_start", "configs/tiny.yaml", "--policy", policy, *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path(__file__).parents[2]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.flows.kill_stage", mode, str(n), "--", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"


def runs(**tags: str):
    from tasks.tracking import experiment_id

    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return MlflowClient().search_runs([experiment_id("r1flow-tiny")], where)


@pytest.mark.parametrize("mode", list(MODES))
def test_sigkill_between_checkpoints_and_during_a_checkpoint_write_resumes_to_the_same_weights(project, policy,
                                                                                             mode, single_thread):
    from prefect.client.orchestration import get_client

    lr = {"full": 0.0011, "lora": 0.0012}[mode]
    sets = overrides(mode, f"cold_start.lr={lr}", f"run.output_dir=runs-{mode}")  # each test its own folders
    stage(project, policy, [*sets, f"run.output_dir=reference-{mode}"])   # uninterrupted
    reference = model_weights(project, f"reference-{mode}")

    running = lambda: [r.info.run_id for r in runs(**{"r1flow.stage": "cold_start"})  # noqa: E731
                       if r.info.status == "RUNNING"]
    killed(project, policy, sets, "after-update", 3)     # lost: step 3 (checkpoint at 2)
    (ckpt,) = (project / f"runs-{mode}" / "stages").glob(".ckpt-cold_start-*")
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000002"]
    orphans = running()
    assert len(orphans) == 1, "the killed process left its stage run RUNNING"
    killed(project, policy, sets, "during-save", 4)      # resumes at 2, replays 3, dies writing 4
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000002"]
    assert list(ckpt.glob(".step-00000004.tmp-*")), "the half-written checkpoint is left, never renamed"
    assert not list((project / f"runs-{mode}" / "stages").glob("cold_start-*/model"))
    orphans += running()
    assert len(set(orphans)) == 2

    report = stage(project, policy, sets)                # through Prefect; resumes from step 2
    resumed = model_weights(project, f"runs-{mode}")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    client = MlflowClient()
    assert [client.get_run(run_id).info.status for run_id in orphans] == ["KILLED", "KILLED"]
    assert "killed" in client.get_run(orphans[0]).data.tags["r1flow.error"]
    parents = [client.get_run(client.get_run(r).data.tags["mlflow.parentRunId"]) for r in orphans]
    assert {p.info.status for p in parents} == {"KILLED"}
    with get_client(sync_client=True) as prefect:
        states = {prefect.read_flow_run(p.data.tags["prefect.flow_run_id"]).state.name for p in parents}
    assert states == {"Crashed"}, "the killed processes' Prefect flow runs are not left Running"
    history = client.get_metric_history(report["stages"][0]["run_id"], "loss")
    assert [m.step for m in history] == [3, 4, 5, 6], "the rerun starts after the last complete checkpoint"


def test_a_stage_that_raises_is_failed_everywhere_registers_nothing_and_resumes(project, policy, single_thread,
                                                                               monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.training import loop

    sets = overrides("full", "cold_start.lr=0.0013", "run.output_dir=runs-raise")
    stage(project, policy, [*sets, "run.output_dir=reference-raise"])
    step = loop.Trainer.step

    def flaky(self, *args, **kwargs):
        if self.updates == 3:
            raise RuntimeError("disk full (injected)")
        return step(self, *args, **kwargs)
    monkeypatch.setattr(loop.Trainer, "step", flaky)
    state = stage(project, policy, sets, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="disk full"):
        state.result()
    (failed,) = [r for r in runs(**{"r1flow.stage": "cold_start"}) if r.data.params.get("lr") == "0.0013"
                 and r.info.status != "FINISHED"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["r1flow.error"] == "RuntimeError: disk full (injected)"
    assert not MlflowClient().search_model_versions(f"run_id = '{failed.info.run_id}'")
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert {t.name: t.state.name for t in task_runs if t.name == "cold_start"} == {"cold_start": "Failed"}

    monkeypatch.setattr(loop.Trainer, "step", step)
    report = stage(project, policy, sets)
    history = MlflowClient().get_metric_history(report["stages"][0]["run_id"], "loss")
    assert [m.step for m in history] == [3, 4, 5, 6]
    resumed, reference = model_weights(project, "runs-raise"), model_weights(project, "reference-raise")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_kill_9_of_r1flow_takes_its_prefect_server_along_and_the_next_start_marks_its_runs_killed(project, policy):
    from tasks import tracking

    args = ["stage", "cold_start", "configs/tiny.yaml", "--policy", policy, "--set", "cold_start.steps=100000",
            "--set", "cold_start.ckpt_every=5", "--set", "run.output_dir=runs-kill9"]
    env = user_env()
    proc = spawn(project, project / "kill9.log", *args, env=env)
    try:
        ckpts = project / "runs-kill9" / "stages"
        wait_for(lambda: list(ckpts.glob(".ckpt-cold_start-*/step-*")), 300, "training to reach a checkpoint")
        family = tree(proc.pid)
        servers = [p for p in family if "uvicorn" in " ".join(p.cmdline())]
        assert servers, f"no Prefect API server under r1flow: {[p.cmdline() for p in family]}"
        os.kill(proc.pid, signal.SIGKILL)  # only the r1flow process: its server must go by itself
        proc.wait(timeout=30)
        wait_for(lambda: not alive(servers), 60, "the Prefect server to stop with its parent")
        assert alive(family) == [], [p.cmdline() for p in alive(family)]
    finally:
        stop_tree(proc, signal.SIGKILL)  # whatever a failed test left

    uri = f"sqlite:///{project / 'mlflow.db'}"
    left = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("r1flow-tiny").experiment_id],
                                         "attributes.status = 'RUNNING'")
    assert {r.data.tags["r1flow.kind"] for r in left} == {"pipeline", "stage"}
    os.environ["MLFLOW_TRACKING_URI"], before = uri, os.environ["MLFLOW_TRACKING_URI"]
    try:
        reaped = tracking.reap_orphaned_runs()
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = before
    assert {r.info.run_id for r in reaped} == {r.info.run_id for r in left}
    assert {MlflowClient(uri).get_run(r.info.run_id).info.status for r in left} == {"KILLED"}


def test_sigterm_stops_r1flow_like_ctrl_c_its_runs_killed_and_its_server_gone(project, policy):
    """`kill PID`, a Prefect cancellation or a pod eviction send SIGTERM: one line saying so, exit
    143 at once, the MLflow runs ended KILLED (not left RUNNING), the private Prefect server gone."""
    args = ["stage", "cold_start", "configs/tiny.yaml", "--policy", policy, "--set", "cold_start.steps=100000",
            "--set", "cold_start.ckpt_every=5", "--set", "run.output_dir=runs-sigterm", "--set", "run.name=sigterm"]
    log = project / "sigterm.log"
    proc = spawn(project, log, *args)
    try:
        wait_for(lambda: list((project / "runs-sigterm" / "stages").glob(".ckpt-cold_start-*/step-*")), 300,
                 "training to reach a checkpoint")
        family = tree(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        wait_for(lambda: not alive(family), 60, "r1flow's children to stop")
    finally:
        stop_tree(proc, signal.SIGKILL)
    assert "terminated (SIGTERM): run the same command again to resume" in log.read_text()

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("r1flow-tiny").experiment_id])
    pipeline = [r for r in runs if r.info.run_name.startswith("sigterm-")]
    assert len(pipeline) == 1, [r.info.run_name for r in runs]
    mine = pipeline + [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline[0].info.run_id]
    assert {r.data.tags["r1flow.kind"] for r in mine} == {"pipeline", "stage"}
    assert {r.info.status for r in mine} == {"KILLED"}
