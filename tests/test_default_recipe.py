"""The default recipe end to end (slow: minutes on 2 cores). Run with `make test-slow`.

Checks the claim the README makes: each training stage beats the one before it on held-out
accuracy by more than three standard errors.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~12 min on 2 cores
def test_default_recipe_improves_stage_over_stage(tmp_path):
    for name in ("configs", "data.dvc", ".dvc", ".dvcignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # DVC here is git-backed, like a clone
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "R1FLOW_"))}
    cli = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*cli, "data", "ensure"], cwd=tmp_path, env=env, check=True)
    out = subprocess.run([*cli, "run", "configs/default.yaml", "--json"], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    metrics = json.loads(out)["metrics"]
    stages = list(metrics)
    for before, after in zip(stages, stages[1:]):
        a, b = metrics[before], metrics[after]
        se = math.sqrt(a["accuracy_se"] ** 2 + b["accuracy_se"] ** 2)
        assert b["accuracy"] - a["accuracy"] > 3 * se, f"{after} does not beat {before}: {a} vs {b}"
