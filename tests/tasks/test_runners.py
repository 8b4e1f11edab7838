"""The task runner a recipe asks for (`runner.task_runner`), by name, with clear errors."""
from __future__ import annotations

import importlib.util
import signal
import threading
import time

import pytest
from prefect.exceptions import TerminationSignal
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import RecipeError
from tasks.recipe import load_recipe
from tasks.runners import TASK_RUNNERS, RunnerConfig, get_task_runner


def test_the_default_runs_one_task_at_a_time_in_process():
    runner = get_task_runner(load_recipe(None).runner)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


def test_threads_with_workers_from_the_recipe():
    recipe = load_recipe(None, ["runner.task_runner=threads", "runner.max_workers=3"])
    runner = get_task_runner(recipe.runner)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, lambda: TerminationSignal(signal.SIGTERM)])
def test_leaving_the_pool_on_ctrl_c_or_sigterm_does_not_wait_for_the_task_running_in_it(interruption):
    """Prefect's own runner waits for a running task on exit: a stage kept `r1flow` alive for
    minutes after SIGTERM. Ours abandons it (the process exits; the stage resumes from its checkpoint)."""
    runner, release = get_task_runner(RunnerConfig()), threading.Event()
    with pytest.raises((KeyboardInterrupt, TerminationSignal)):
        with runner:
            started = threading.Event()
            runner._executor.submit(lambda: (started.set(), release.wait(60)))  # what a running task holds
            started.wait(10)
            t0 = time.monotonic()
            raise interruption()
    waited = time.monotonic() - t0
    release.set()
    assert waited < 5


def test_leaving_the_pool_normally_waits_for_its_tasks():
    runner, done = get_task_runner(RunnerConfig()), []
    with runner:
        runner._executor.submit(lambda: (time.sleep(0.5), done.append(1)))
    assert done == [1]


def test_an_unknown_runner_names_the_choices():
    with pytest.raises(RecipeError, match=r"runner.task_runner: .*unknown task runner 'spark'; choose from "
                                          r"\['dask', 'ray', 'sequential', 'threads'\]"):
        load_recipe(None, ["runner.task_runner=spark"])


@pytest.mark.parametrize("name, module", [("dask", "prefect_dask"), ("ray", "prefect_ray")])
def test_an_engine_that_is_not_installed_says_which_extra_to_install(name, module):
    if importlib.util.find_spec(module) is not None:
        runner = get_task_runner(RunnerConfig(task_runner=name, address="tcp://127.0.0.1:1"))
        assert type(runner).__module__.startswith(module)
        return
    with pytest.raises(ValueError, match=rf"runner.task_runner={name} needs the {module.replace('_', '-')} "
                                         rf"package: pip install 'r1flow\[{name}\]'"):
        get_task_runner(RunnerConfig(task_runner=name))


def test_every_runner_name_resolves_to_a_factory():
    assert set(TASK_RUNNERS) == {"sequential", "threads", "dask", "ray"}


@pytest.mark.skipif(importlib.util.find_spec("prefect_dask") is None, reason="pip install 'r1flow[dask]'")
def test_dask_runs_the_fanned_out_tasks_in_its_worker_processes(prefect_server):
    """The same submit/wait pattern as `PipelineRun.evaluate_models`, on a local Dask cluster."""
    import os

    from prefect import flow, task

    @task
    def where(i: int) -> int:
        return os.getpid()

    @flow
    def fan_out() -> list[int]:
        with get_task_runner(RunnerConfig(task_runner="dask", max_workers=2)) as runner:
            futures = [runner.submit(where, {"i": i}) for i in range(4)]
            for f in futures:
                f.wait()
            return [f.state.result() for f in futures]

    pids = fan_out()
    assert len(pids) == 4 and os.getpid() not in pids
