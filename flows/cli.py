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
    from tasks.recipe import load_recipe

    return load_recipe(path or Path("configs/default.yaml"), overrides or [])


def _fail(err: BaseException) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(2)


def _interrupted() -> None:
    typer.secho("interrupted: run the same command again to resume (finished stages are cached, "
                "a stage in progress resumes from its last checkpoint)", fg="yellow", err=True)
    raise typer.Exit(130)


USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, RuntimeError)


def _quiet_prefect() -> None:
    """Prefect's own run logs go to the Prefect UI only; the terminal shows r1flow's lines."""
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).propagate = False


def _print_report(report: dict, as_json: bool) -> None:
    from tasks.console import summary_table

    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo("\n" + summary_table(report["stages"]))
    typer.echo("\nCompare runs and models:  r1flow ui mlflow    (http://127.0.0.1:5000, experiment "
               f"'{report.get('experiment', 'r1flow')}')")
    typer.echo("See flow runs and logs:  r1flow ui prefect   (http://127.0.0.1:4200)")


JsonOpt = typer.Option(False, "--json", help="Print the run's report as JSON instead of a table.")


@app.command()
def run(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Run the recipe's pipeline end to end (cached stages are skipped)."""
    root = configure()
    try:
        cfg = _recipe(recipe, set_)
        from flows.pipeline import r1_pipeline

        _quiet_prefect()
        report = r1_pipeline(cfg, str(root))
    except USER_ERRORS as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    _print_report({**report, "experiment": cfg.run.experiment}, as_json)


def _input_option(name: str):
    return typer.Option(None, f"--{name}", help=f"The stage's `{name.replace('-', '_')}` input: a model directory, "
                        "runs:/… or models:/NAME@ALIAS (a file for --dataset).")


@app.command()
def stage(name: str = typer.Argument(..., help="Stage to run, e.g. cold_start (see `r1flow stages`)."),
          recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt,
          from_: Optional[str] = typer.Option(None, "--from", help="The stage's first input (usually --policy)."),
          policy: Optional[str] = _input_option("policy"), model: Optional[str] = _input_option("model"),
          reference: Optional[str] = _input_option("reference"),
          reward_model: Optional[str] = _input_option("reward-model"),
          teacher: Optional[str] = _input_option("teacher"), student: Optional[str] = _input_option("student"),
          dataset: Optional[str] = _input_option("dataset"), as_json: bool = JsonOpt) -> None:
    """Rerun one stage from given inputs (checked before anything starts), then evaluate its model."""
    root = configure()
    try:
        from tasks.inputs import resolve_inputs
        from tasks.stages import get_stage

        spec = get_stage(name)
        given = {k: v for k, v in dict(policy=policy, model=model, reference=reference, reward_model=reward_model,
                                       teacher=teacher, student=student, dataset=dataset).items() if v}
        if from_:
            if not spec.inputs:
                raise ValueError(f"{name}: takes no input, so --from has nothing to set")
            given.setdefault(spec.inputs[0], from_)
        resolve_inputs(spec, given, root)  # every typo is one line, before the flow starts
        cfg = _recipe(recipe, set_)
        from flows.single_stage import r1_stage

        _quiet_prefect()
        report = r1_stage(name, cfg, given, str(root))
    except USER_ERRORS as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()
    _print_report({**report, "experiment": cfg.run.experiment}, as_json)


@app.command("stages")
def stages_() -> None:
    """List the stages, their inputs and the data files they read."""
    from tasks.stages import registry

    for spec in registry().values():
        inputs = ", ".join(f"{n}{'?' if n in spec.optional else ''}" for n in spec.inputs) or "-"
        typer.echo(f"{spec.name:20s} inputs: {inputs:28s} reads: {', '.join(spec.reads) or '-':22s} {spec.doc}")


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
