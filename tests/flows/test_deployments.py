"""prefect.yaml: every deployment loads its flow and its parameters validate (without a server)."""
from __future__ import annotations

from pathlib import Path

import yaml

from components.config import validate
from tasks.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_the_deployed_recipe_is_configs_default_yaml():
    deployed = validate(Recipe, SPEC["definitions"]["recipes"]["default"], "prefect.yaml")
    assert deployed == load_recipe(REPO / "configs/default.yaml")


def test_pipeline_stage_and_evaluation_deployments_on_the_process_pool():
    deployments = {d["entrypoint"].split(":")[1]: d for d in SPEC["deployments"]}
    assert set(deployments) == {"r1_pipeline", "r1_stage", "r1_evaluate", "r1_tts"}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"r1flow"}
    assert [s["cron"] for s in deployments["r1_pipeline"]["schedules"]] == ["0 3 * * *"]
    assert not any(deployments[d].get("schedules") for d in ("r1_stage", "r1_evaluate", "r1_tts"))


def test_every_deployment_loads_its_flow_and_its_parameters_validate(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # `prefect deploy` runs here; entrypoints are relative to it
    for deployment in SPEC["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        params = flow.validate_parameters(deployment["parameters"])
        assert params["recipe"].run.name == "default"
    stage = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith("r1_stage"))
    assert stage["parameters"]["stage"] == "cold_start" and "policy" in stage["parameters"]["inputs"]
