"""`r1flow server …`, `worker`, `deploy`, `ui`: the team set-up on one machine.

    r1flow server start            # Prefect :4200 and MLflow :5000 on 127.0.0.1, state in .r1flow/servers/
    r1flow deploy                  # the deployments of prefect.yaml on the `process` pool r1flow
    r1flow worker                  # runs their flow runs (foreground)
    r1flow server stop             # nothing left: no process, no port, no state file
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_common import USER_ERRORS, fail
from tasks.settings import configure

server_app = typer.Typer(no_args_is_help=True, help="Local Prefect and MLflow servers for this project.")
CODE_ROOT = Path(__file__).resolve().parent.parent   # where prefect.yaml and the flows' entrypoints are
POOL = "r1flow"

NamesArg = typer.Argument(None, help="prefect, mlflow (default: both).")


def _names(names: Optional[List[str]]) -> list[str]:
    from tasks.servers import SERVERS, get_server

    for name in names or []:
        get_server(name)
    return list(names or SERVERS)


@server_app.command("start")
def server_start(names: Optional[List[str]] = NamesArg,
                 host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean otherwise)."),
                 prefect_port: int = typer.Option(4200, min=1, max=65535, help="Prefect server port (API and UI)."),
                 mlflow_port: int = typer.Option(5000, min=1, max=65535,
                                                 help="MLflow tracking server port (API and UI).")) -> None:
    """Start the servers in the background and say where they listen."""
    root = configure()
    try:
        from tasks.servers import start

        ports = {"prefect": prefect_port, "mlflow": mlflow_port}
        for state in start(root, {name: ports[name] for name in _names(names)}, host):
            name = state.name
            typer.echo(f"{name:8s} running  {state.ui:26s} pid {state.pid}, log {state.log}")
            typer.echo(f"         clients: {'PREFECT_API_URL' if name == 'prefect' else 'MLFLOW_TRACKING_URI'}"
                       f"={state.url}")
        typer.echo("r1flow commands in this project use them until `r1flow server stop`.")
    except USER_ERRORS as e:
        fail(e)


@server_app.command("stop")
def server_stop(names: Optional[List[str]] = NamesArg) -> None:
    """Stop the servers (every process they started) and free their ports."""
    root = configure()
    try:
        from tasks.servers import stop

        for name in _names(names):
            state = stop(root, name)
            typer.echo(f"{name:8s} {'stopped (was pid %d, port %d)' % (state.pid, state.port) if state else 'not running'}")
    except USER_ERRORS as e:
        fail(e)


@server_app.command("status")
def server_status() -> None:
    """Which servers run for this project, and where."""
    root = configure()
    from tasks.servers import SERVERS, read_state

    for name in SERVERS:
        state = read_state(root, name)
        typer.echo(f"{name:8s} " + (f"running  {state.ui:26s} pid {state.pid}" if state else "stopped"))


def register_ops(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(deploy)
    app.command()(ui)


def _need_server() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError("no Prefect server: run `r1flow server start` (or set PREFECT_API_URL)")
    return url


def worker(pool: str = typer.Option(POOL, help="Work pool (created as a `process` pool if missing)."),
           limit: int = typer.Option(1, help="Flow runs at once (one torch job at a time on a small machine).")
           ) -> None:
    """Run the deployments' flow runs on this machine (a Prefect `process` worker; foreground)."""
    configure()
    try:
        _need_server()
    except USER_ERRORS as e:
        fail(e)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
               "--limit", str(limit)]
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": _pythonpath()})


def deploy() -> None:
    """Register the deployments of prefect.yaml (pipeline with a cron schedule, one stage, evaluation)."""
    configure()
    try:
        _need_server()
        _ensure_pool(POOL)
        command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
        proc = subprocess.run(command, cwd=CODE_ROOT, env={**os.environ, "PYTHONPATH": _pythonpath()},
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"`prefect deploy --all` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        typer.echo(f"deployed prefect.yaml ({CODE_ROOT}) to {os.environ['PREFECT_API_URL']}, pool '{POOL}'; "
                   "start a worker with `r1flow worker`")
    except USER_ERRORS as e:
        fail(e)


def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def _pythonpath() -> str:
    """The flows import `tasks` and `components` from the code folder, installed or not."""
    return os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def ui(which: str = typer.Argument(..., help="mlflow or prefect"),
       host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean otherwise)."),
       port: int = typer.Option(0, min=0, max=65535, help="Port (default 5000 for MLflow, 4200 for Prefect).")) -> None:
    """Serve the MLflow or Prefect UI on this project's stores in the foreground (`server start`: background)."""
    root = configure()
    from tasks.servers import SERVERS

    if which not in SERVERS:
        fail(ValueError(f"ui: expected one of {sorted(SERVERS)}, got {which!r}"))
    spec = SERVERS[which]
    port = port or spec.default_port
    typer.echo(f"{which} UI on {spec.ui_url(host, port)} (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(spec.command(root, host, port), cwd=root,
                                     env={**os.environ, **spec.env(root, host, port)}))
