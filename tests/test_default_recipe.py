"""The default recipe end to end (slow: ~14 minutes on 2 cores).
Run with `make test-slow`.

Checks the claims the README makes, on a fresh copy of the project:
- each reasoning stage (base → cold_start → rejection sampling + sft → GRPO) beats the model it
  started from on held-out accuracy by more than three standard errors of the difference, and
  GRPO ends at 85 % or more. The same 1,000 problems score both models, so the error is the
  paired one the pipeline reports (`report["gains"]`: the standard error of the per-problem
  difference), 0.54-0.81 of the unpaired sqrt(se1^2 + se2^2), which treats the two scores as
  independent samples. On seed 0, the recipe's, the gains are +40.8 points (24.1 paired s.e.),
  +7.2 (6.1) to 85.8 % and +3.8 (4.7) to 89.6 %; over seeds 0-2 SFT gains 5.0-6.1 s.e. and GRPO
  ends at 89.6 / 88.9 / 88.7 %, seed 1's GRPO at 2.8 s.e. (docs/performance.md, "A shorter cold
  start").
  The run repeats itself to the decimal on one machine; another machine's rounding moves a GRPO
  run's end by about half a point;
- alignment raises the true preference rate by more than three standard errors of the
  per-prompt difference (paired, as the pipeline reports it: `gains["alignment"]["preference_gain"]`;
  the distillation checks below are unpaired) while held-out accuracy drops by at most 2 points
  (the alignment issue's target; measured with DPO's change averaged with the reasoner, 60 % kept:
  +18.3 points at -0.3 of accuracy on seed 0, 6.5 unpaired s.e.; on an AVX2-only CPU, where the
  reasoner already declined most untrusted prompts, +5.8 points, 6.1 paired s.e. and 2.1
  unpaired: README, "On a CPU without bfloat16");
- the distilled student, at most a third of the teacher's parameters, keeps at least 85 % of
  the aligned teacher's accuracy and beats the same student trained on curated data alone by
  more than three standard errors (its base pretrained by Muon: 85.2 % on seed 0, 95.4 % of the
  teacher, +9.3 points over its control at 5.3 s.e.; 94-97 % of the teacher on seeds 0-2, where
  AdamW's student kept 81-91 %, seed 1's under the line: docs/performance.md, "Muon for the student");
- the TTS evaluation of both final models ran and logged its cells.
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
REASONING = ["base", "cold_start", "sft", "reasoning_rl"]


def gain_in_se(before: dict, after: dict, key: str = "accuracy") -> float:
    se = math.sqrt(before[f"{key}_se"] ** 2 + after[f"{key}_se"] ** 2)
    return (after[key] - before[key]) / se


def run_recipe(workdir: Path, recipe: str) -> dict:
    """`r1flow run RECIPE --json` on a fresh copy of the project's recipes and data versions in `workdir`."""
    for name in ("configs", "data.dvc", ".dvc", ".dvcignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, workdir / name)
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)  # DVC here is git-backed, like a clone
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "R1FLOW_"))}
    cli = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*cli, "data", "ensure", recipe], cwd=workdir, env=env, check=True)
    out = subprocess.run([*cli, "run", recipe, "--json"], cwd=workdir, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def assert_every_reasoning_stage_gains(report: dict) -> None:
    """Each reasoning stage beats the model it started from by more than three paired standard errors."""
    m, gains = report["metrics"], report["gains"]
    for before, after in zip(REASONING, REASONING[1:]):
        g = gains[after]
        assert g["over"] == before and g["gain"] == pytest.approx(m[after]["accuracy"] - m[before]["accuracy"])
        assert g["gain"] > 3 * g["gain_se"], f"{after} does not beat {before}: {g}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_recipe_meets_its_claims(tmp_path):
    report = run_recipe(tmp_path, "configs/default.yaml")
    m = report["metrics"]
    assert_every_reasoning_stage_gains(report)
    assert m["reasoning_rl"]["accuracy"] >= 0.85
    aligned = report["gains"]["alignment"]  # the house rules' gain, paired prompt by prompt as accuracy's is
    assert aligned["over"] == "reasoning_rl" and aligned["preference_gain"] > 3 * aligned["preference_gain_se"]
    assert m["reasoning_rl"]["accuracy"] - m["alignment"]["accuracy"] <= 0.02
    assert m["distill"]["accuracy"] >= 0.85 * m["alignment"]["accuracy"]
    assert gain_in_se(m["distill_control"], m["distill"]) > 3
    ran = {r["label"] for r in report["stages"]}
    assert {"reward_model", "process_reward_model", "tts_eval", "tts_eval/student"} <= ran

