"""tasks/launch.py: a supervised stage run by `accelerate launch` in two CPU processes (cpu_ddp.yaml).

`test_cold_start_in_two_processes` launches the real `cold_start` stage (2 gloo processes,
~30 s on 2 busy cores, mostly imports) inside an MLflow run, as `stage_task` does, and checks
what the parent gets back and what rank 0 alone recorded; the model equals one-process training
on the same rows and global batch within atol=1e-5. The other tests check the refusals, which
happen before anything is launched.
"""
from __future__ import annotations

import os
import signal
import sys

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.config import ModelConfig, RunConfig, TrainConfig
from components.io import digest_path, write_jsonl
from components.modeling.models import load_model, load_tokenizer, save_model
from components.training.loop import no_log, no_progress
from components.training.sft import run_sft
from tasks import tracking
from tasks.launch import (CONFIGS, _run_forwarding, _say_single_process, accelerate_config, launch_stage,
                          runs_data_parallel)
from tasks.refs import ModelRef
from tasks.stage import StageContext
from tasks.stages import get_stage
from tasks.versioning import DataRef
from tests.components.training.test_sft import ROWS

CFG = TrainConfig(steps=4, batch_size=2, grad_accum=2, lr=3e-3, ckpt_every=2, log_every=2)
TWO = RunConfig(name="launchtest", num_processes=2, accelerate_config=str(CONFIGS / "cpu_ddp.yaml"))


def context(tmp_path, run_id: str, cfg=CFG) -> StageContext:
    write_jsonl(tmp_path / "data" / "cold_start.jsonl", ROWS)
    data = DataRef(str(tmp_path / "data"), md5="m", files={"cold_start.jsonl": "0" * 32})
    return StageContext("cold_start", cfg, ModelConfig(), 0, "launchtest", data, tmp_path / "out",
                        tmp_path / ".ckpt-out", run_id, no_log, no_progress)


@pytest.fixture()
def policy(tiny_model, tiny_tokenizer, tmp_path) -> ModelRef:
    save_model(tiny_model, tiny_tokenizer, tmp_path / "policy")
    return ModelRef(uri=str(tmp_path / "policy"), digest=digest_path(tmp_path / "policy"), stage="base")


def test_cold_start_in_two_processes(policy, tmp_path, single_thread):
    spec = get_stage("cold_start")
    with tracking.run("cold_start", "launch-test") as run_id:
        ctx = context(tmp_path, run_id)
        ref = launch_stage(spec, ctx, {"policy": policy}, TWO, "cold_start")
    assert isinstance(ref, ModelRef) and ref.uri == str(tmp_path / "out" / "model") and ref.run_id == run_id
    assert ref.registered.startswith("models:/launchtest/") and ref.digest == digest_path(ref.uri)
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 4]  # rank 0 only, once each
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 1
    assert sorted(p.name for p in ctx.ckpt_dir.glob("step-*")) == ["step-00000002", "step-00000004"]

    model, tokenizer = load_model(policy.uri), load_tokenizer(policy.uri)  # one process, same global batch
    run_sft(model, tokenizer, ROWS, CFG, tmp_path / "one-process", seed=0)
    launched = load_model(ref.uri).state_dict()
    diff = max((v - launched[k]).abs().max().item() for k, v in model.state_dict().items())
    assert diff <= 1e-5, diff


@pytest.mark.filterwarnings("ignore:Logger 'r1flow' attempted to send logs")  # said outside a flow run
def test_only_the_supervised_stages_run_data_parallel(capsys):
    _say_single_process.cache_clear()
    assert runs_data_parallel(get_stage("cold_start"), TWO)
    assert not runs_data_parallel(get_stage("cold_start"), RunConfig())
    assert not runs_data_parallel(get_stage("reasoning_rl"), TWO)
    assert not runs_data_parallel(get_stage("alignment"), TWO)
    said = [line for line in capsys.readouterr().err.splitlines() if "num_processes" in line]
    assert len(said) == 1 and said[0].endswith("run.num_processes=2 applies to base, cold_start, distill_control, "
                                               "sft, student_base; the other stages run in one process")


def test_grad_accum_must_split_across_the_processes(policy, tmp_path):
    ctx = context(tmp_path, "no-run", cfg=CFG.model_copy(update={"grad_accum": 3}))
    with pytest.raises(ValueError, match=r"cold_start.grad_accum=3 cannot be split across run.num_processes=2"):
        launch_stage(get_stage("cold_start"), ctx, {"policy": policy}, TWO, "cold_start")


def test_sharded_configs_are_refused():
    for name in ("fsdp.yaml", "zero2.yaml", "zero3.yaml"):
        with pytest.raises(ValueError, match=rf"{name} is (FSDP|DEEPSPEED), which shards the model"):
            accelerate_config(RunConfig(num_processes=2, accelerate_config=str(CONFIGS / name)))
    assert accelerate_config(RunConfig(num_processes=2))[0].name == ("ddp.yaml" if torch.cuda.is_available()
                                                                     else "cpu_ddp.yaml")


def test_a_failed_launch_keeps_its_last_lines():
    code, tail = _run_forwarding([sys.executable, "-c", "import sys; print('a', flush=True); sys.exit('boom')"], {})
    assert code == 1 and "".join(tail) == "a\nboom\n"


def test_an_interrupted_launch_stops_the_launched_processes(capsys):
    # Ctrl-C or SIGTERM (r1flow's handler raises) while the stage runs in its processes: the
    # launcher and what it started stop now, not when the stage would have ended
    script = ("import subprocess, sys, time; c = subprocess.Popen(['sleep', '600']); "
              "print('pids', c.pid, flush=True); time.sleep(600)")
    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run_forwarding([sys.executable, "-c", script], {"PATH": os.environ["PATH"]})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    grandchild = int(capsys.readouterr().err.split("pids")[1].split()[0])
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def interrupt(signum, frame):
    raise KeyboardInterrupt


@pytest.mark.slow  # ~80 s: the Prefect test server, the tiny project's data, two launches of 2 processes
def test_a_recipe_with_two_processes_runs_its_supervised_stages_through_the_launcher(tmp_path, prefect_server,
                                                                                      monkeypatch):
    from flows.pipeline import r1_pipeline
    from tasks.recipe import load_recipe
    from tests.conftest import make_project

    from tasks import stage_task

    folder = make_project(tmp_path / "proj")
    monkeypatch.chdir(folder)
    launched, real = [], stage_task.launch_stage
    monkeypatch.setattr(stage_task, "launch_stage", lambda spec, *a: launched.append(spec.name) or real(spec, *a))
    recipe = load_recipe(folder / "configs/tiny.yaml", [
        "run.stages=[base,cold_start]", "run.num_processes=2", "run.name=tiny-dp",
        "base.grad_accum=2", "base.batch_size=8", "cold_start.grad_accum=2", "cold_start.batch_size=4"])
    report = r1_pipeline(recipe, str(folder))
    trained = [r for r in report["stages"] if not r["evaluation_of"]]
    assert [r["label"] for r in trained] == ["base", "cold_start"]
    assert 0.0 <= report["metrics"]["cold_start"]["accuracy"] <= 1.0
    for row in trained:
        run = MlflowClient().get_run(row["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["r1flow.stage"] == row["label"]
        history = MlflowClient().get_metric_history(row["run_id"], "loss")
        assert len(history) == len({m.step for m in history}) > 0  # logged by rank 0 alone
        assert row["output"].startswith("models:/tiny-dp/")
    assert launched == ["base", "cold_start"], "each supervised stage went through the launcher"
    assert not list((folder / "runs" / "stages").glob(".ckpt-*")), "a finished stage's checkpoints are removed"
