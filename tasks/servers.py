"""Local Prefect and MLflow servers: started in the background, found again, stopped without leftovers.

`r1flow server start` runs each server as its own process group (so `stop` reaches every process
it spawned), writes its log to `.r1flow/servers/<name>.log` and its state (pid, process start
time, URL) to `.r1flow/servers/<name>.json`, and waits until the server answers its health check.
`tasks.settings.configure` reads the state files, so every later `r1flow` command talks to the
running servers. `stop` sends SIGTERM to the group, SIGKILL after a grace period, and returns
once no process of the group is left and the port is free again.

A single `r1flow run` with no server running uses a private one instead (`tasks/private_server.py`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import httpx
import psutil

from components.io import atomic_file

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Server:
    """How to run one kind of server: its command line, environment and health check."""

    name: str
    default_port: int
    health: str                                   # path answered with 200 once the server is up
    url: Callable[[str, int], str]                # what clients set (PREFECT_API_URL / MLFLOW_TRACKING_URI)
    command: Callable[[Path, str, int], list[str]]
    env: Callable[[Path, str, int], dict[str, str]]

    def ui_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}"


def _prefect_command(root: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
            "--analytics-off"]


def _prefect_env(root: Path, host: str, port: int) -> dict[str, str]:
    # The UI asks /ui-settings for its API address; without this it names port 4200 whatever --port is.
    return {"PREFECT_UI_API_URL": f"http://{host}:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": f"http://{host}:{port}/api"}


def _mlflow_command(root: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "mlruns").as_uri()]


def _mlflow_env(root: Path, host: str, port: int) -> dict[str, str]:
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 7 idle job-runner processes


SERVERS = {
    "prefect": Server("prefect", 4200, "/api/health", lambda h, p: f"http://{h}:{p}/api", _prefect_command,
                      _prefect_env),
    "mlflow": Server("mlflow", 5000, "/health", lambda h, p: f"http://{h}:{p}", _mlflow_command, _mlflow_env),
}


def get_server(name: str) -> Server:
    if name not in SERVERS:
        raise ValueError(f"unknown server {name!r}; choose from {sorted(SERVERS)}")
    return SERVERS[name]


@dataclass(frozen=True)
class ServerState:
    """What `start` recorded about a running server."""

    name: str
    pid: int
    created: float      # the process's start time: a reused pid is not mistaken for the server
    host: str
    port: int
    url: str
    log: str

    @property
    def ui(self) -> str:
        return get_server(self.name).ui_url(self.host, self.port)

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).create_time() == self.created
        except psutil.Error:
            return False


def state_dir(root: Path) -> Path:
    return Path(root) / ".r1flow" / "servers"


def read_state(root: Path, name: str) -> ServerState | None:
    """The state of server `name` if it is running (a stale state file is removed)."""
    path = state_dir(root) / f"{name}.json"
    if not path.exists():
        return None
    state = ServerState(**json.loads(path.read_text()))
    if state.alive():
        return state
    path.unlink(missing_ok=True)
    return None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise RuntimeError(f"cannot bind {host}:{port}: {e.strerror or e} "
                               "(is --host an address of this machine?)") from None
    return True


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; raise with the server's last log lines if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was healthy{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return "; its log ends:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start(root: Path, ports: dict[str, int | None], host: str = HOST, timeout: float = 180) -> list[ServerState]:
    """Start the servers named in `ports` ({name: port or None for its default}) in the background,
    side by side; a server already running is returned as it is."""
    launched = []
    try:
        for name, port in ports.items():
            launched.append(_launch(root, name, host, port))
        return [item if isinstance(item, ServerState) else _await(root, *item, timeout) for item in launched]
    except BaseException:  # none of the servers this call launched is left without a state file
        for item in launched:
            if not isinstance(item, ServerState) and read_state(root, item[0].name) is None:
                kill_group(item[1].pid, grace=10)
        raise


def _launch(root: Path, name: str, host: str, port: int | None):
    spec = get_server(name)
    running = read_state(root, name)
    if running is not None:
        return running
    port = port or spec.default_port
    if not port_free(host, port):
        raise RuntimeError(f"{name}: port {port} on {host} is in use; choose another with --{name}-port")
    folder = state_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    env = {**os.environ, **spec.env(root, host, port)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.command(root, host, port), cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return spec, proc, host, port, log


def _await(root: Path, spec: Server, proc: subprocess.Popen, host: str, port: int, log: Path,
           timeout: float) -> ServerState:
    """Wait until the launched server answers its health check, then record its state."""
    try:
        wait_healthy(f"http://{host}:{port}{spec.health}", proc, timeout, log)
    except BaseException:
        kill_group(proc.pid, grace=10)
        raise
    state = ServerState(spec.name, proc.pid, psutil.Process(proc.pid).create_time(), host, port,
                        spec.url(host, port), str(log))
    with atomic_file(state_dir(root) / f"{spec.name}.json") as fh:
        json.dump(asdict(state), fh, indent=2)
    return state


def stop(root: Path, name: str, grace: float = 20) -> ServerState | None:
    """Stop server `name` (its whole process group); returns what was stopped, None if nothing ran."""
    get_server(name)
    state = read_state(root, name)
    if state is None:
        return None
    kill_group(state.pid, grace)
    deadline = time.monotonic() + grace
    while not port_free(state.host, state.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    (state_dir(root) / f"{name}.json").unlink(missing_ok=True)
    return state


def kill_group(pid: int, grace: float) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL what is left after `grace` seconds."""
    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def running_env(root: Path) -> dict[str, str]:
    """Client settings that point at this project's running servers (none if none runs)."""
    env = {}
    if (prefect := read_state(root, "prefect")) is not None:
        env["PREFECT_API_URL"] = prefect.url
    if (mlflow := read_state(root, "mlflow")) is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow.url
    return env
