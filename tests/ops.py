"""Helpers for tests that run r1flow as a user does: CLI subprocesses, real servers, real signals.

Every process a test starts is started in its own session (so its whole tree can be found and
stopped), gets an environment without the test session's Prefect/MLflow settings (the project's
own `.r1flow/` applies, as on a user's machine), and is checked to be gone afterwards.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parent.parent


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PREFECT_/MLFLOW_/R1FLOW_ settings, r1flow importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "R1FLOW_"))}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
                "OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update(extra)
    return env


def cli(project: Path, *args: str, env: dict | None = None, timeout: float = 600, check: bool = True):
    """`r1flow ARGS` in `project`; fails the test with the command's output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=project, env=env or user_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"r1flow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def spawn(project: Path, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start `r1flow ARGS` in `project` in its own session, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=project, env=env or user_env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (those alive now)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> list[psutil.Process]:
    """Signal the session `proc` leads, wait, SIGKILL what is left; returns the processes it had."""
    members = tree(proc.pid)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(members, timeout=timeout)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)
    return members


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running (the same process: pid and start time)."""
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sqlite_unlocked(db: Path) -> bool:
    """True if a write transaction can start on `db` right away (nobody holds a lock on it)."""
    import sqlite3

    con = sqlite3.connect(db, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--hide-scrollbars"]


def chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, workdir: Path, screenshot: Path | None = None, size: str = "1400,900",
           timeout: float = 180) -> str:
    """The DOM headless Chromium renders for `url` (and a PNG of it when `screenshot` is given)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as profile:
        base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout).stdout
        if screenshot is not None:
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout,
                           check=True)
    return dom
