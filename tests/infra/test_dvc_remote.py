"""infra/dvc/: the S3 (MinIO) remote example and the compose worker's override, read and validated
by DVC's own config loader and schema; the commands the example documents, run in a scratch
repository, produce exactly the example's remote and keep credentials out of .dvc/config."""
from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from dvc.config import Config, ConfigError, merge

from tests.infra import compose_file as cf

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "infra" / "dvc" / "config.example"
WORKER = REPO / "infra" / "dvc" / "worker.config.local"
CREDENTIAL_KEYS = {"access_key_id", "secret_access_key", "session_token", "credentialpath", "password", "token"}


def credentials(conf: dict) -> list[str]:
    return [f"{name}.{key}" for name, remote in conf["remote"].items() for key in remote if key in CREDENTIAL_KEYS]


@pytest.mark.parametrize("path", [EXAMPLE, WORKER], ids=["example", "worker"])
def test_config_is_valid_for_dvc_and_holds_no_credentials(path):
    conf = Config.validate(Config.load_file(str(path)))
    minio = urlparse(conf["remote"]["minio"]["url"])
    assert (minio.scheme, minio.netloc) == ("s3", "r1flow-dvc")
    assert urlparse(conf["remote"]["minio"]["endpointurl"]).scheme == "http"
    assert credentials(conf) == []


def test_checks_catch_credentials_and_typos(tmp_path):
    conf = Config.load_file(str(EXAMPLE))
    leaky = copy.deepcopy(conf)
    leaky["remote"]["minio"]["secret_access_key"] = "x"
    assert credentials(Config.validate(leaky)) == ["minio.secret_access_key"]
    conf["remote"]["minio"]["endpoint_url"] = "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="endpoint_url"):
        Config.validate(conf)


def test_local_directory_remote_stays_the_default():
    example, project = Config.load_file(str(EXAMPLE)), Config.load_file(str(REPO / ".dvc" / "config"))
    assert example["core"]["remote"] == project["core"]["remote"] == "local"
    assert example["remote"]["local"] == project["remote"]["local"]


def test_example_and_worker_reach_the_compose_minio_bucket():
    doc, env = cf.load(), cf.read_env()
    example, worker = Config.load_file(str(EXAMPLE)), Config.load_file(str(WORKER))
    bucket = urlparse(example["remote"]["minio"]["url"]).netloc
    assert f"r1flow/{bucket}" in doc["services"]["minio-setup"]["command"][0]  # created by the set-up job
    published = cf.resolve(doc["services"]["minio"]["ports"][0], env).split(":")
    host = urlparse(example["remote"]["minio"]["endpointurl"])
    assert (host.hostname, host.port) == (published[0], int(published[1]))  # the published S3 API
    inside = urlparse(worker["remote"]["minio"]["endpointurl"])
    assert inside.hostname in doc["services"] and inside.port == int(published[2])  # minio:9000


def test_worker_override_wins_over_the_project_config():
    """DVC merges config.local over .dvc/config key by key: in the worker the remote is minio:9000."""
    merged = copy.deepcopy(Config.load_file(str(EXAMPLE)))
    merge(merged, Config.load_file(str(WORKER)))
    assert merged["core"]["remote"] == "minio"
    assert merged["remote"]["minio"]["endpointurl"] == "http://minio:9000"


def documented_commands() -> list[list[str]]:
    """The `dvc remote …` commands in the example's comments, variables left for the shell."""
    return [shlex.split(m) for m in re.findall(r"^#\s+(dvc remote [^#\n]+)", EXAMPLE.read_text(), re.MULTILINE)]


def test_documented_commands_reproduce_the_example(tmp_path):
    commands = documented_commands()
    assert len(commands) >= 4
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "S3_ACCESS_KEY_ID": "AKTEST", "S3_SECRET_ACCESS_KEY": "SKTEST"}
    dvc = lambda *args: subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=env,  # noqa: E731
                                       check=True, capture_output=True, text=True)
    dvc("init", "--no-scm", "-q")
    for command in commands:  # "$S3_ACCESS_KEY_ID" as the shell would expand it
        dvc(*[re.sub(r"\$(\w+)", lambda m: env[m[1]], arg) for arg in command[1:]])
    shared = Config.load_file(str(tmp_path / ".dvc" / "config"))
    local = Config.load_file(str(tmp_path / ".dvc" / "config.local"))
    assert shared["remote"]["minio"] == Config.load_file(str(EXAMPLE))["remote"]["minio"]
    assert local["remote"]["minio"] == {"access_key_id": "AKTEST", "secret_access_key": "SKTEST"}
