"""The short-lived Prefect API server of one `r1flow` command, when no server is running.

Prefect's own ephemeral server outlives a parent killed with `kill -9` (it is reparented to
PID 1 and keeps its port; measured with Prefect 3.8.8). This one runs the same command, but
asks the kernel to SIGTERM it when its parent dies (Linux `PR_SET_PDEATHSIG`), so no server
outlives the pipeline that started it. Two commands starting at once take turns to start
theirs, so one of them migrates the shared SQLite database first.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

from tasks.locks import file_lock
from tasks.servers import HOST, free_port, wait_healthy


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when my parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def private_prefect_server(timeout: float = 180, while_starting: Callable[[], object] | None = None
                           ) -> Iterator[str]:
    """A Prefect API server for this process only; yields its API URL, which is this process's
    PREFECT_API_URL from the start of the block to its end. The server stops when the block ends,
    and the kernel stops it if this process is killed (so nothing is left behind by `kill -9`).
    `while_starting` runs in this process while the server boots (its ~4 s overlap the caller's
    own start-up work, e.g. importing the stages and Prefect itself, which reads PREFECT_API_URL
    when imported); if it raises, the server is stopped."""
    port = free_port()
    url = f"http://{HOST}:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent  # found without importing prefect
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory",
               "prefect.server.api.server:create_app", "--host", HOST, "--port", str(port), "--log-level", "error",
               "--lifespan", "on"]  # what Prefect's own ephemeral server runs
    preexec = die_with_parent if sys.platform.startswith("linux") else None
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    with file_lock(home / "r1flow-server-start.lock"):  # two runs at once: one migrates the database first
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=preexec)
        os.environ["PREFECT_API_URL"] = url
        try:
            if while_starting is not None:
                while_starting()
            wait_healthy(f"{url}/health", proc, timeout)
        except BaseException:
            os.environ.pop("PREFECT_API_URL", None)
            proc.kill()
            proc.wait()
            raise
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
