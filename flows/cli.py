"""`r1flow`: run recipes, rerun single stages, manage the versioned data, open the UIs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tasks.settings import configure

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="The curated data in data/, versioned by DVC (data.dvc).")
app.add_typer(data_app, name="data")

RecipeArg = typer.Argument(None, help="YAML recipe (default: configs/default.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a recipe field: section.field=value (repeatable).")


def _recipe(path: Optional[Path], overrides: Optional[List[str]]):
    from components.config import load_recipe

    return load_recipe(path or Path("configs/default.yaml"), overrides or [])


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(2)


USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, RuntimeError)


@app.command()
def run(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt) -> None:
    """Run the recipe's pipeline end to end (cached stages are skipped)."""
    root = configure()
    try:
        cfg = _recipe(recipe, set_)
        from flows.pipeline import r1_pipeline

        metrics = r1_pipeline(cfg.model_dump(mode="json"), str(root))
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def stage(name: str = typer.Argument(..., help="Stage to run, e.g. cold_start."),
          from_: str = typer.Option(..., "--from", help="Input model: a path, runs:/…, or models:/NAME@ALIAS."),
          recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt) -> None:
    """Rerun one stage from a given model, then evaluate it."""
    root = configure()
    try:
        cfg = _recipe(recipe, set_)
        from flows.single_stage import single_stage

        metrics = single_stage(name, cfg.model_dump(mode="json"), from_, str(root))
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def serve(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt,
          name: str = typer.Option("r1flow", help="Deployment name."),
          cron: Optional[str] = typer.Option(None, help="Cron schedule, e.g. '0 3 * * *'."),
          interval: Optional[int] = typer.Option(None, help="Run every N seconds.")) -> None:
    """Serve the pipeline as a scheduled Prefect deployment (runs until stopped)."""
    root = configure()
    try:
        cfg = _recipe(recipe, set_)
        from flows.pipeline import r1_pipeline

        r1_pipeline.serve(name=name, cron=cron, interval=interval,
                          parameters={"recipe": cfg.model_dump(mode="json"), "root": str(root)})
    except USER_ERRORS as e:
        _fail(e)


@data_app.command("generate")
def data_generate(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt,
                  push: bool = typer.Option(True, help="Push the new version to the DVC remote.")) -> None:
    """(Re)build the curated data from the recipe's generator, `dvc add` it and push it."""
    root = configure()
    try:
        from components.data.curate import build
        from tasks.versioning import dvc, read_dvc_file

        cfg = _recipe(recipe, set_)
        counts = build(cfg.data, root / cfg.data.dir)
        dvc(root, "add", "-q", cfg.data.dir)
        if push:
            dvc(root, "push", "-q")
        typer.echo(json.dumps({"md5": read_dvc_file(root)[1], "rows": counts}, indent=2))
    except USER_ERRORS as e:
        _fail(e)


@data_app.command("ensure")
def data_ensure(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt) -> None:
    """Make data/ match data.dvc: pull it, or rebuild it when no remote has it (checked by md5)."""
    root = configure()
    try:
        from tasks.versioning import DataVersionError, data_version, dvc, read_dvc_file

        try:
            ref = data_version(root)
        except DataVersionError:
            _, wanted = read_dvc_file(root)
            from components.data.curate import build

            build(_recipe(recipe, set_).data, root / "data")
            dvc(root, "add", "-q", "data")
            _, got = read_dvc_file(root)
            if got != wanted:
                raise DataVersionError(f"data.dvc: rebuilt data has md5 {got}, expected {wanted}")
            dvc(root, "push", "-q")
            ref = data_version(root)
        typer.echo(f"data version {ref.md5} ({len(ref.files)} files)")
    except USER_ERRORS as e:
        _fail(e)


@data_app.command("status")
def data_status() -> None:
    """Print the data version and whether data/ matches it."""
    root = configure()
    try:
        from tasks.versioning import data_version

        ref = data_version(root)
        typer.echo(json.dumps({"md5": ref.md5, "files": ref.files}, indent=2))
    except USER_ERRORS as e:
        _fail(e)


@app.command()
def ui(which: str = typer.Argument(..., help="mlflow or prefect"),
       host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean otherwise)."),
       port: int = typer.Option(0, help="Port (default 5000 for MLflow, 4200 for Prefect).")) -> None:
    """Serve the MLflow or Prefect UI on this project's stores."""
    root = configure()
    commands = {
        "mlflow": [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port or 5000),
                   "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"],
                   "--artifacts-destination", os.environ["R1FLOW_ARTIFACT_ROOT"], "--workers", "1"],
        "prefect": [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port or 4200)],
    }
    if which not in commands:
        _fail(ValueError(f"ui: expected one of {sorted(commands)}, got {which!r}"))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    raise typer.Exit(subprocess.call(commands[which], cwd=root, env=env))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
