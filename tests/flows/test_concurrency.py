"""Two pipelines at once on one project (the same recipe twice, as two people or two schedules
would start it): both finish, and nothing is clobbered.

Both `r1flow run` processes start their own Prefect API server on the project's one Prefect
database, write to the one MLflow SQLite store and registry, and compute the same cache keys, so
they meet at the same output and checkpoint folders. A stage runs in one of them at a time (a
lock per key); the other finds it done and takes it from the cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.conftest import make_project
from tests.ops import user_env

STAGES = ["base", "evaluate/base", "cold_start", "evaluate/cold_start"]


def test_the_same_recipe_twice_at_once_clobbers_nothing(tmp_path):
    project = make_project(tmp_path / "shared")
    args = [sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--set", "run.stages=[base,cold_start]",
            "--json"]
    procs = [subprocess.Popen(args, cwd=project, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    reports = [json.loads(out[out.index("{"):]) for out, _ in outputs]

    # Both pipelines report every stage, pointing at the same outputs, one folder per stage key.
    rows = [{r["label"]: r for r in report["stages"]} for report in reports]
    assert all(set(r) == set(STAGES) for r in rows)
    assert [rows[0][s]["output"] for s in STAGES] == [rows[1][s]["output"] for s in STAGES]
    assert sorted(r["status"] for r in (rows[0]["base"], rows[1]["base"])) == ["cached", "ran"]
    stages = project / "runs" / "stages"
    assert len(list(stages.glob("base-*"))) == 1 and len(list(stages.glob("cold_start-*"))) == 1
    assert not [p.name for p in stages.rglob(".*tmp-*")] + [p.name for p in stages.rglob(".*old-*")]
    weights = load_file(str(next(stages.glob("cold_start-*/model/model.safetensors"))))
    assert all(torch.isfinite(w).all() for w in weights.values())

    # MLflow: two finished pipeline runs, each with its own finished stage runs; models registered once.
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("r1flow-tiny").experiment_id
    for report in reports:
        parent = client.get_run(report["parent_run_id"])
        kids = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert parent.info.status == "FINISHED" and {k.info.status for k in kids} <= {"FINISHED"}
        assert parent.data.tags["r1flow.champion.decision"] in ("promoted", "kept")
    versions = client.search_model_versions("name = 'tiny'")
    for stage in ("base", "cold_start"):  # registered once, by the pipeline that ran it
        assert sum(v.run_id == rows[0][stage]["run_id"] for v in versions) == 1
    assert client.get_model_version_by_alias("tiny", "champion")

    # Fanned-out stages lock their keys too: two `r1flow evaluate` of the same two models at once
    # (threads: both evaluations of a process run side by side). One process holds both keys and
    # scores both models; the other waits and finds both cached: one folder per key, no "ran" twice.
    models = [str(next(stages.glob(f"{stage}-*/model"))) for stage in ("base", "cold_start")]
    args = [sys.executable, "-m", "flows.cli", "evaluate", *models, "--recipe", "configs/tiny.yaml",
            "--set", "evaluate.limit=7", "--set", "runner.task_runner=threads", "--json"]
    procs = [subprocess.Popen(args, cwd=project, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    statuses = [sorted({r["status"] for r in json.loads(out[out.index("{"):])["stages"]}) for out, _ in outputs]
    assert sorted(statuses) == [["cached"], ["ran"]]
    evaluations = [p for p in stages.glob("evaluate-*") if (p / "result.json").exists()]
    assert len(evaluations) == 2 + 2  # the pipelines' two (whole set) and these two (limit 7)
