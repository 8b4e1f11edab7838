"""`r1flow`: run recipes, rerun single stages, evaluate models, manage data, servers and deployments."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_common import USER_ERRORS, RecipeArg, SetOpt, fail, load, load_checked
from flows.cli_data import data_app
from flows.cli_ops import register_ops, server_app
from tasks.settings import configure

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@contextlib.contextmanager
def prefect_api(prepare=None, flow: str | None = None):
    """Point Prefect at a server: the configured one (`r1flow server start`, PREFECT_API_URL), or a
    private one for this command that stops with it, even when it is killed. Yields `prepare()`.
    It runs while a private server boots, and so do importing the command's `flow` module (Prefect,
    MLflow) and opening the MLflow store it writes to: an all-cached run starts its flow ~4 s sooner."""
    result = [None]

    def run_prepare():
        result[0] = prepare() if prepare else None  # first: a recipe's error waits for no import
        if flow:
            from tasks.tracking import open_store

            importlib.import_module(flow)
            open_store()

    if os.environ.get("PREFECT_API_URL"):
        run_prepare()
        yield result[0]
        return
    from tasks.private_server import private_prefect_server

    with private_prefect_server(while_starting=run_prepare), _no_heartbeats():
        try:
            yield result[0]
        finally:
            _flush_prefect_logs()  # before the server goes: else "Error logging to API"


@contextlib.contextmanager
def _no_heartbeats():
    """No flow-run heartbeats on a private server. They let a long-lived server tell a crashed run
    from a slow one; a private server stops with its run (the next command marks a killed run
    Crashed itself), and the heartbeat thread costs every command up to a second at its end (its
    join waits out the thread's one-second sleep)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _flush_prefect_logs() -> None:
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()


EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a Prefect cancellation, a pod eviction): stop as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _interrupted(e: KeyboardInterrupt) -> None:
    what, code = (("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(e, Terminated)
                  else ("interrupted", EXIT_INTERRUPTED))
    typer.secho(f"{what}: run the same command again to resume (finished stages are cached, "
                "a stage in progress resumes from its last checkpoint)", fg="yellow", err=True)
    raise typer.Exit(code)


def _quiet_prefect() -> None:
    """Prefect's own run logs go to the Prefect UI only; the terminal shows r1flow's lines."""
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).propagate = False


def _print_report(report: dict, as_json: bool, root: Path) -> None:
    from tasks.console import summary_table

    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo("\n" + summary_table(report["stages"]))
    t = report.get("time")
    if t and t["compute_s"]:
        typer.echo(f"\n{t['wall_s']:.0f} s in the flow: {t['compute_s']:.0f} s of stage work, {t['overhead_s']:.1f} s "
                   f"({100 * t['overhead_share']:.1f} %) of orchestration and tracking")
    champion = report.get("champion") or {}
    if champion:
        typer.echo(f"\nchampion: {champion['decision']} ({champion['reason']})")
    typer.echo(f"\nCompare runs and models:  {_ui_url(root, 'mlflow')}{_experiment_page(report)}")
    typer.echo(f"See flow runs and logs:  {_ui_url(root, 'prefect')}")


def _experiment_page(report: dict) -> str:
    """The experiment's runs table (MLflow 3.17's UI opens on its GenAI view unless the URL asks)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(report.get("experiment", "r1flow"))
    return f"/#/experiments/{experiment.experiment_id}?workflowType=machine_learning" if experiment else ""


def _ui_url(root: Path, name: str) -> str:
    from tasks.servers import HOST, get_server, read_state

    state = read_state(root, name)
    if state is None:
        return f"`r1flow server start`, then {get_server(name).ui_url(HOST, get_server(name).default_port)}"
    return get_server(name).ui_url(state.host, state.port)


JsonOpt = typer.Option(False, "--json", help="Print the run's report as JSON instead of a table.")


@app.command()
def run(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Run the recipe's pipeline end to end (cached stages are skipped)."""
    root = configure()
    try:
        with prefect_api(lambda: load_checked(recipe, set_, root), flow="flows.pipeline") as cfg:
            from flows.pipeline import r1_pipeline

            _quiet_prefect()
            report = r1_pipeline(cfg, str(root))
    except USER_ERRORS as e:
        fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    _print_report({**report, "experiment": cfg.run.experiment}, as_json, root)


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
          dataset: Optional[str] = _input_option("dataset"), verifier: Optional[str] = _input_option("verifier"),
          process_verifier: Optional[str] = _input_option("process-verifier"), as_json: bool = JsonOpt) -> None:
    """Rerun one stage from given inputs (checked before anything starts), then evaluate its model."""
    root = configure()
    try:
        from tasks.inputs import resolve_inputs
        from tasks.stages import get_stage

        spec = get_stage(name)
        given = {k: v for k, v in dict(policy=policy, model=model, reference=reference, reward_model=reward_model,
                                       teacher=teacher, student=student, dataset=dataset, verifier=verifier,
                                       process_verifier=process_verifier).items() if v}
        if from_:
            if not spec.inputs:
                raise ValueError(f"{name}: takes no input, so --from has nothing to set")
            given.setdefault(spec.inputs[0], from_)
        resolve_inputs(spec, given, root)  # every typo is one line, before the flow starts
        with prefect_api(lambda: load_checked(recipe, set_, root), flow="flows.single_stage") as cfg:
            from flows.single_stage import r1_stage

            _quiet_prefect()
            report = r1_stage(name, cfg, given, str(root))
    except USER_ERRORS as e:
        fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    _print_report({**report, "experiment": cfg.run.experiment}, as_json, root)


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
    """Serve the pipeline as a scheduled Prefect deployment (runs until stopped) on the project's server."""
    root = configure()
    try:
        from flows.cli_ops import _need_server

        _need_server()  # a private server would vanish with this command, and its schedule with it
        with prefect_api(lambda: load(recipe, set_)) as cfg:
            from flows.pipeline import r1_pipeline

            r1_pipeline.serve(name=name, cron=cron, interval=interval,
                              parameters={"recipe": cfg.model_dump(mode="json"), "root": str(root)})
    except USER_ERRORS as e:
        fail(e)


@app.command()
def evaluate(models: List[str] = typer.Argument(..., help="Models to score: directories, runs:/… or "
                                                "models:/NAME@ALIAS."),
             recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe (default: configs/default.yaml)."),
             set_: Optional[List[str]] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Score models on the recipe's held-out set, side by side on the recipe's task runner."""
    root = configure()
    try:
        from tasks.inputs import resolve_model

        cfg = load(recipe, set_)
        for uri in models:
            resolve_model(uri, root)  # every typo is one line, before the flow starts
        from tasks.runners import get_task_runner

        get_task_runner(cfg.runner)  # a missing Dask/Ray extra, too
        with prefect_api():
            from flows.evaluate import r1_evaluate

            _quiet_prefect()
            report = r1_evaluate(list(models), cfg, str(root))
    except USER_ERRORS as e:
        fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    _print_report({**report, "experiment": cfg.run.experiment}, as_json, root)


@app.command()
def tts(models: List[str] = typer.Argument(..., help="Models to search with: directories, runs:/… or "
                                           "models:/NAME@ALIAS."),
        process_verifier: Optional[str] = typer.Option(None, "--process-verifier", help="The process reward model "
                                                       "(step-level search, and best-of-N scores without --verifier)."),
        verifier: Optional[str] = typer.Option(None, "--verifier", help="An outcome verifier of correctness."),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe whose tts_eval section is the grid "
                                              "(default: configs/default.yaml; configs/tts.yaml has all of it)."),
        set_: Optional[List[str]] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Accuracy against test-time compute: every strategy x budget of the recipe, for each model."""
    root = configure()
    try:
        from tasks.inputs import resolve_model

        cfg = load(recipe, set_)
        for uri, what in [(m, "model") for m in models] + [(process_verifier, "process_verifier"),
                                                            (verifier, "verifier")]:
            if uri:
                resolve_model(uri, root, what)  # every typo is one line, before the flow starts
        _check_verifiers(cfg.tts_eval.cells, outcome=bool(verifier or process_verifier), process=bool(process_verifier))
        with prefect_api():
            from flows.tts import r1_tts

            _quiet_prefect()
            report = r1_tts(list(models), cfg, process_verifier or "", verifier or "", str(root))
    except USER_ERRORS as e:
        fail(e)
    except KeyboardInterrupt as e:
        _interrupted(e)
    _print_report({**report, "experiment": cfg.run.experiment}, as_json, root)


def _check_verifiers(cells, *, outcome: bool, process: bool) -> None:
    """A cell whose strategy needs a verifier the command was not given: one line, before anything loads."""
    from components.search.registry import verifiers_needed

    flags = {"score": "--verifier or --process-verifier", "score_steps": "--process-verifier"}
    have = {"score": outcome, "score_steps": process}
    for i, cell in enumerate(cells):
        missing = [flags[v] for v in sorted(verifiers_needed(cell.strategy, cell.options)) if not have[v]]
        if missing:
            raise ValueError(f"tts_eval.cells.{i}: {cell.strategy} scores with a learned verifier; give "
                             f"{' and '.join(missing)}")


app.add_typer(data_app, name="data")
app.add_typer(server_app, name="server")
register_ops(app)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)  # Prefect's flow engine chains to it after marking its run crashed
    try:
        app()
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)


def _exit_now(code) -> None:
    """Exit as Python would, without its final teardown: wait for non-daemon threads (not after
    Ctrl-C or SIGTERM: a stage running in a worker thread is abandoned, its MLflow run reaped as
    KILLED by the next start), run the atexit handlers (logging, MLflow, Prefect), flush, then
    `os._exit`. Freeing torch, MLflow and Prefect module by module takes ~2 s after the work is
    done (measured on an all-cached run)."""
    import atexit
    import threading

    if code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        pools = sys.modules.get("concurrent.futures.thread")
        if hasattr(pools, "_python_exit"):  # wake idle executor workers (MLflow's artifact downloads), as
            pools._python_exit()            # Python's exit does: else an error after a model fetch waits forever
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()  # the handlers Python would run at exit (private name, stable since 2.x)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
