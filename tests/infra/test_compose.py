"""infra/compose.yaml checked without a container engine: images pinned, ports on loopback,
variables documented, no secret literals, start-up order, volumes, and that MLflow, Prefect, the
worker and DVC all point at the same Postgres databases and MinIO buckets."""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from fnmatch import fnmatch
from urllib.parse import urlparse

import pytest
import yaml

from tests.infra import compose_file as cf

DOC = cf.load()
EXAMPLE_ENV = cf.read_env()
SECRETS = {k: f"test-{k.lower()}" for k, v in EXAMPLE_ENV.items() if cf.SECRET_NAME.search(k) or k.endswith("_USER")}
FILLED_ENV = {k: v for k, v in EXAMPLE_ENV.items() if v} | SECRETS


def service(name: str) -> dict:
    return DOC["services"][name]


def resolved(name: str) -> dict:
    """A service after interpolation with the example env (secrets filled in)."""
    return cf.resolve(service(name), FILLED_ENV)


def test_every_service_has_a_pinned_image_or_a_build():
    assert cf.image_problems(DOC) == []
    for dockerfile in [cf.INFRA / "Dockerfile", cf.INFRA / "mlflow" / "Dockerfile"]:
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
        assert bases and all(cf.pinned(b) for b in bases), dockerfile


def test_servers_run_the_versions_the_project_pins():
    """Prefect and MLflow servers at the client versions of pyproject.toml (a bump must move both)."""
    pins = dict(re.findall(r'"(prefect|mlflow|dvc)==([^"]+)"', (cf.INFRA.parent / "pyproject.toml").read_text()))
    assert service("prefect-server")["image"].startswith(f"prefecthq/prefect:{pins['prefect']}-")
    assert f"ghcr.io/mlflow/mlflow:v{pins['mlflow']}\n" in (cf.INFRA / "mlflow" / "Dockerfile").read_text()
    assert service("mlflow")["image"] == f"r1flow-mlflow:{pins['mlflow']}"
    for doc in [cf.INFRA / "README.md", cf.INFRA / "dvc" / "config.example"]:
        assert f'"dvc[s3]=={pins["dvc"]}"' in doc.read_text(), doc


def test_project_image_leaves_credentials_and_local_state_out():
    ignored = set((cf.INFRA / "Dockerfile.dockerignore").read_text().split())
    assert {".dvc/config.local", "infra/.env", ".git", ".venv", ".r1flow", "data", "mlflow.db"} <= ignored
    assert (cf.INFRA / ".gitignore").read_text().split()[-1] == ".env"


def test_image_check_rejects_latest_and_untagged_images():
    broken = {"services": {"a": {"image": "minio/minio:latest"}, "b": {"image": "postgres"},
                           "c": {"image": "localhost:5000/x"}, "d": {}}}
    assert len(cf.image_problems(broken)) == 4


@pytest.mark.parametrize("env", [{}, EXAMPLE_ENV], ids=["defaults", "env-example"])
def test_published_ports_bind_loopback(env):
    binds = cf.published_binds(DOC, env)
    assert set(binds) == {"minio", "mlflow", "prefect-server"}  # Postgres is never published
    assert {b for bs in binds.values() for b in bs} == {"127.0.0.1"}


def test_port_check_sees_ports_open_to_every_interface():
    doc = {"services": {"x": {"ports": ["5000:5000", "${BIND:-0.0.0.0}:1:1"]}}}
    assert cf.published_binds(doc, {}) == {"x": ["0.0.0.0", "0.0.0.0"]}


def test_every_variable_is_listed_in_env_example():
    assert cf.variables(DOC) - set(EXAMPLE_ENV) == set()
    assert cf.variables(yaml.safe_load((cf.INFRA / "compose.gpu.yaml").read_text())) - set(EXAMPLE_ENV) == set()


def test_required_secrets_stop_compose_until_set():
    with pytest.raises(cf.MissingVariable, match="POSTGRES_PASSWORD"):
        cf.resolve(service("postgres"), EXAMPLE_ENV)
    assert resolved("postgres")["environment"]["POSTGRES_PASSWORD"] == "test-postgres_password"


def test_no_secret_literals_in_compose_or_env_example():
    assert cf.secret_literals(DOC) == []
    assert {k: v for k, v in EXAMPLE_ENV.items() if cf.SECRET_NAME.search(k) and v} == {}


def test_secret_check_catches_literals():
    doc = copy.deepcopy(DOC)
    doc["services"]["mlflow"]["environment"]["PGPASSWORD"] = "hunter2"
    doc["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "${MINIO_ROOT_PASSWORD:-minioadmin}"
    doc["services"]["mlflow"]["command"].append("--backend-store-uri=postgresql://r1flow:hunter2@postgres/mlflow")
    assert len(cf.secret_literals(doc)) == 3


def test_start_up_order_waits_for_health():
    assert cf.depends_on_problems(DOC) == []
    assert all("healthcheck" in s for n, s in DOC["services"].items() if n not in ("minio-setup", "prefect-worker"))


def test_depends_on_check_catches_wrong_conditions():
    doc = copy.deepcopy(DOC)
    doc["services"]["mlflow"]["depends_on"] = {"postgres": {"condition": "service_started"},
                                               "prefect-worker": {"condition": "service_completed_successfully"},
                                               "redis": {"condition": "service_healthy"}}
    assert len(cf.depends_on_problems(doc)) == 3


def test_one_shot_jobs_are_awaited_so_up_wait_succeeds():
    assert cf.unadopted_one_shots(DOC) == []
    doc = copy.deepcopy(DOC)
    del doc["services"]["mlflow"]["depends_on"]["minio-setup"]
    assert cf.unadopted_one_shots(doc) == ["minio-setup"]


def test_named_volumes_are_declared_and_used():
    assert cf.volume_problems(DOC) == []
    doc = copy.deepcopy(DOC)
    doc["volumes"]["stale"] = {}
    doc["services"]["mlflow"]["volumes"] = ["mlruns:/mlruns"]
    assert cf.volume_problems(doc) == ["volume mlruns used, not declared", "volume stale declared, not used"]


def test_mlflow_uses_postgres_and_the_minio_bucket():
    mlflow, setup = resolved("mlflow"), resolved("minio-setup")
    args = dict(a.split("=", 1) for a in mlflow["command"] if a.startswith("--"))
    store = urlparse(args["--backend-store-uri"])
    assert (store.scheme, store.hostname, store.port, store.path) == (
        "postgresql+psycopg2", "postgres", 5432, "/mlflow")
    assert "CREATE DATABASE mlflow" in (cf.INFRA / "postgres" / "initdb.sql").read_text()
    bucket = urlparse(args["--artifacts-destination"])
    assert bucket.scheme == "s3" and f"r1flow/{bucket.netloc}" in setup["command"][0]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_prefect_server_uses_postgres_and_its_ui_calls_the_published_port():
    env = resolved("prefect-server")["environment"]
    assert (env["PREFECT_SERVER_DATABASE_HOST"], env["PREFECT_SERVER_DATABASE_NAME"]) == (
        "postgres", service("postgres")["environment"]["POSTGRES_DB"])
    published = resolved("prefect-server")["ports"][0].split(":")[1]
    assert urlparse(env["PREFECT_UI_API_URL"]).port == int(published) == int(EXAMPLE_ENV["PREFECT_PORT"])


def test_worker_reaches_servers_by_names_mlflow_accepts():
    worker, mlflow = resolved("prefect-worker"), resolved("mlflow")
    tracking = urlparse(worker["environment"]["MLFLOW_TRACKING_URI"])
    prefect = urlparse(worker["environment"]["PREFECT_API_URL"])
    assert tracking.hostname in DOC["services"] and prefect.hostname in DOC["services"]
    allowed = mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in [tracking.netloc, f"127.0.0.1:{EXAMPLE_ENV['MLFLOW_PORT']}", "localhost:5000"]:
        assert any(fnmatch(host, pattern) for pattern in allowed), host
    assert not any(fnmatch("evil.example:5000", pattern) for pattern in allowed)


def test_worker_runs_the_mounted_project_with_the_compose_dvc_remote():
    worker = resolved("prefect-worker")
    mounts = dict(volume.split(":")[:2] for volume in worker["volumes"])  # source -> target
    assert mounts[".."] == worker["working_dir"] == worker["environment"]["R1FLOW_ROOT"] == "/r1flow"
    assert mounts["./dvc/worker.config.local"] == "/r1flow/.dvc/config.local"
    assert "--type" in worker["command"] and worker["command"][worker["command"].index("--type") + 1] == "process"


def compose_cli() -> list[str] | None:
    """`docker compose` (v2) if present, else the older standalone `docker-compose`, else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_cli() is None, reason="no Compose CLI here (`docker compose` plugin or docker-compose)")
def test_compose_cli_accepts_the_file_with_the_example_env(tmp_path):
    cli, text = compose_cli(), (cf.INFRA / "compose.yaml").read_text()
    if cli == ["docker-compose"]:  # 1.x predates the top-level `name` key; the rest is the same spec
        text = re.sub(r"(?m)^name: .*\n", "", text)
    (tmp_path / "compose.yaml").write_text(text)
    (tmp_path / "filled.env").write_text("".join(f"{k}={v}\n" for k, v in FILLED_ENV.items()))
    base = [*cli, "--project-directory", str(cf.INFRA), "-f", str(tmp_path / "compose.yaml")]
    shell = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV}  # the shell's values would win
    for overlay in [[], ["-f", str(cf.INFRA / "compose.gpu.yaml")]]:
        ok = subprocess.run([*base, *overlay, "--env-file", str(tmp_path / "filled.env"), "config", "-q"],
                            capture_output=True, text=True, env=shell)
        assert ok.returncode == 0, ok.stderr
    unset = subprocess.run([*base, "--env-file", str(cf.INFRA / ".env.example"), "config", "-q"],
                           capture_output=True, text=True, env=shell)
    assert unset.returncode != 0 and "set POSTGRES_PASSWORD in infra/.env" in unset.stdout + unset.stderr
