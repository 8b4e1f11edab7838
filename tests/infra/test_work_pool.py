"""infra/k8s/gpu-job-template.json, the Kubernetes work pool's base job template, checked the way
Prefect checks it (its server-side WorkPoolCreate validator, its job-variable validation, its
templating) plus a JSON Schema check, without a server or a cluster."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.schema_tools import validate as prefect_validate
from prefect.utilities.schema_tools.validation import ValidationError as JobVariablesError
from prefect.utilities.templating import apply_values, find_placeholders
from pydantic import ValidationError

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "gpu-job-template.json"
TEMPLATE = json.loads(TEMPLATE_PATH.read_text())
PROPERTIES = TEMPLATE["variables"]["properties"]


def undeclared(template: dict) -> set[str]:
    """`{{ var }}` placeholders of the job configuration that the variables do not declare."""
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    return used - set(template["variables"].get("properties", {}))


def render(values: dict) -> dict:
    """The job configuration a worker builds: variable defaults overridden by `values`."""
    defaults = {k: v["default"] for k, v in PROPERTIES.items() if v.get("default") is not None}
    return apply_values(copy.deepcopy(TEMPLATE["job_configuration"]), defaults | values)


def container(job_manifest: dict) -> dict:
    return job_manifest["spec"]["template"]["spec"]["containers"][0]


def test_every_placeholder_is_a_declared_variable():
    assert undeclared(TEMPLATE) == set()


def test_undeclared_placeholder_is_caught_by_us_and_by_prefect():
    broken = copy.deepcopy(TEMPLATE)
    container(broken["job_configuration"]["job_manifest"])["image"] = "{{ image_name }}"
    assert undeclared(broken) == {"image_name"}
    with pytest.raises(ValidationError, match="image_name"):
        WorkPoolCreate(name="r1flow-k8s", type="kubernetes", base_job_template=broken)


def test_prefect_accepts_the_template_as_a_work_pool():
    pool = WorkPoolCreate(name="r1flow-k8s", type="kubernetes", base_job_template=TEMPLATE)
    assert pool.base_job_template == TEMPLATE


def test_variables_are_a_valid_json_schema_and_defaults_obey_it():
    validator = jsonschema.validators.validator_for(TEMPLATE["variables"])
    validator.check_schema(TEMPLATE["variables"])
    for name, schema in PROPERTIES.items():
        if "default" in schema:
            validator(schema).validate(schema["default"])
        assert schema.get("description"), f"{name} needs a description (the Prefect UI shows it)"


def test_schema_checks_catch_a_bad_schema_and_a_bad_default():
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema({"type": "object", "properties": {"gpu": {"type": "integr"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator({**PROPERTIES["gpu"]}).validate(-1)


@pytest.mark.parametrize("values", [{}, {"gpu": 8, "memory_limit": "512Gi", "cpu_request": "500m"},
                                    {"gpu": 0, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}])
def test_deployment_job_variables_that_prefect_accepts(values):
    prefect_validate(values, TEMPLATE["variables"], raise_on_error=True, preprocess=True, ignore_required=True)


@pytest.mark.parametrize("values", [{"gpu": -1}, {"gpu": "two"}, {"gpu": 1.5}, {"memory_limit": "lots"},
                                    {"image_pull_policy": "Sometimes"}, {"env": {"A": 1}}])
def test_deployment_job_variables_that_prefect_rejects(values):
    field = next(iter(values))
    with pytest.raises(JobVariablesError, match=f"field '{field}"):
        prefect_validate(values, TEMPLATE["variables"], raise_on_error=True, preprocess=True, ignore_required=True)


def test_gpus_are_requested_and_limited_by_a_variable_with_a_sane_default():
    assert PROPERTIES["gpu"]["type"] == "integer" and 1 <= PROPERTIES["gpu"]["default"] <= 8
    for values, gpus in [({}, PROPERTIES["gpu"]["default"]), ({"gpu": 8}, 8), ({"gpu": 0}, 0)]:
        resources = container(render(values)["job_manifest"])["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus


def test_rendered_job_is_complete_and_carries_no_credentials():
    rendered = render({"name": "r1flow-sft"})
    manifest = rendered["job_manifest"]
    assert find_placeholders(json.dumps(rendered)) == set()
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["generateName"] == "r1flow-sft-"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    secret = {"secretRef": {"name": PROPERTIES["secret_name"]["default"]}}
    assert container(manifest)["envFrom"] == [secret]  # credentials: only from the Kubernetes Secret
    assert container(TEMPLATE["job_configuration"]["job_manifest"])["env"] == "{{ env }}"
    assert PROPERTIES["env"]["default"] == {}


def test_the_kubernetes_worker_builds_the_job():
    """Prefect's own Kubernetes worker (when installed: pip install prefect-kubernetes) turns the
    template into the Job it would submit; no cluster and no API server are contacted."""
    worker = pytest.importorskip("prefect_kubernetes.worker", reason="prefect-kubernetes is not installed")
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun

    class NoClient:
        def __getattr__(self, name):
            raise AssertionError(f"the template needed the Prefect API ({name})")

    config = asyncio.run(worker.KubernetesWorkerJobConfiguration.from_template_and_values(
        TEMPLATE, {"gpu": 4}, client=NoClient()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="brave-otter"))
    job = container(config.job_manifest)
    assert job["resources"]["limits"]["nvidia.com/gpu"] == 4 and job["args"][:2] == ["prefect", "flow-run"]
    assert any(e["name"] == "PREFECT__FLOW_RUN_ID" for e in job["env"]) and config.namespace == "r1flow"
