"""How a flow fans out independent tasks (evaluating several models): a Prefect task runner by name.

The recipe's `runner` section chooses it: `sequential` (the default: one torch job at a time,
right for one small machine), `threads`, or an existing engine, `dask` or `ray`, through
Prefect's integrations (optional extras, not installed by default: `pip install 'r1flow[dask]'`
or `'r1flow[ray]'`). With `address` set, Dask and Ray connect to a running cluster instead of
starting a local one.
"""
from __future__ import annotations

import importlib
from typing import Callable

from pydantic import Field, field_validator

from components.config import Section


def _thread_pool(max_workers: int):
    """Prefect's thread-pool runner, except that leaving it on Ctrl-C or SIGTERM does not wait for
    the task running in a worker thread to finish (Prefect's waits: a stage for minutes). The
    process is exiting; the stage resumes from its last checkpoint on the next run."""
    from prefect.exceptions import TerminationSignal
    from prefect.task_runners import ThreadPoolTaskRunner

    class InterruptibleThreadPool(ThreadPoolTaskRunner):
        def __exit__(self, exc_type, exc_value, traceback) -> None:
            interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, TerminationSignal))
            if interrupted and self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None  # so Prefect's __exit__ does not shut it down again, waiting
            super().__exit__(exc_type, exc_value, traceback)

    return InterruptibleThreadPool(max_workers=max_workers)


def _threads(cfg: "RunnerConfig"):
    return _thread_pool(cfg.max_workers)


def _sequential(cfg: "RunnerConfig"):
    return _thread_pool(1)


def _dask(cfg: "RunnerConfig"):
    module = _optional("prefect_dask", "dask")
    if cfg.address:
        return module.DaskTaskRunner(address=cfg.address)
    return module.DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_workers, "threads_per_worker": 1,
                                                 "processes": True})


def _ray(cfg: "RunnerConfig"):
    module = _optional("prefect_ray", "ray")
    return module.RayTaskRunner(address=cfg.address) if cfg.address else module.RayTaskRunner(
        init_kwargs={"num_cpus": cfg.max_workers})


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"runner.task_runner={extra} needs the {module.replace('_', '-')} package: "
                         f"pip install 'r1flow[{extra}]'") from None


TASK_RUNNERS: dict[str, Callable] = {"sequential": _sequential, "threads": _threads, "dask": _dask, "ray": _ray}


class RunnerConfig(Section):
    """How independent tasks of a flow run side by side (evaluations of several models)."""

    task_runner: str = Field("sequential", description="sequential (one at a time, in this process) | threads | "
                             "dask (pip install 'r1flow[dask]') | ray (pip install 'r1flow[ray]').")
    max_workers: int = Field(1, ge=1, le=1024, description="Tasks at once (threads, or local Dask/Ray workers).")
    address: str | None = Field(None, description="A running Dask scheduler (tcp://host:8786) or Ray cluster "
                                "(ray://host:10001) to use instead of starting a local one.")

    @field_validator("task_runner")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in TASK_RUNNERS:
            raise ValueError(f"unknown task runner {v!r}; choose from {sorted(TASK_RUNNERS)}")
        return v


def get_task_runner(cfg: RunnerConfig):
    """A fresh Prefect task runner for `cfg` (enter it with `with` to start it)."""
    return TASK_RUNNERS[cfg.task_runner](cfg)
