"""Ctrl-C and SIGTERM wait for the MLflow write in progress, then stop the run as KILLED."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tasks import tracking


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Ctrl-C as an interactive Python process has it: a shell starts a background job (`make
    test &`, nohup) with SIGINT ignored, and Python then installs no handler of its own."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_midway(monkeypatch, method: str, sig: int) -> list[str]:
    """Make `MlflowClient.<method>` receive `sig` halfway through: the signal arrives, then the
    real write runs (where an undeferred handler would already have cut it off)."""
    real, calls = getattr(MlflowClient, method), []

    def interrupted(self, *args, **kwargs):
        if not calls:
            os.kill(os.getpid(), sig)
            time.sleep(0.2)  # the handler runs here unless it is held
        calls.append(method)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, interrupted)
    return calls


@pytest.mark.parametrize("sig, error", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, ValueError)])
def test_a_signal_during_a_metric_write_lands_after_it_and_the_run_ends_killed(monkeypatch, sig, error):
    def on_sigterm(signum, frame):
        raise ValueError("terminated")  # stands in for r1flow's and Prefect's SIGTERM handlers

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with pytest.raises(error):
            with tracking.run("held", "r1flow-test-signals") as run_id:
                log = tracking.metric_logger(run_id)
                calls = _interrupt_midway(monkeypatch, "log_batch", sig)
                log({"loss": 1.5}, 7)
                pytest.fail("the signal was not delivered after the write")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == ["log_batch"]
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics == {"loss": 1.5}  # the write finished before the signal took effect
    assert run.info.status == ("KILLED" if sig == signal.SIGINT else "FAILED")
    assert run.data.tags[tracking.ERROR_TAG].startswith(error.__name__)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_signal_during_the_write_of_a_killed_runs_end_is_held_too(monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("held-twice", "r1flow-test-signals") as run_id:
            _interrupt_midway(monkeypatch, "set_tag", signal.SIGINT)  # the error tag, written after the first
            raise KeyboardInterrupt
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.ERROR_TAG] == "KeyboardInterrupt: "


def test_a_slow_write_says_why_it_holds_the_signal(capfd):
    with pytest.raises(KeyboardInterrupt):
        with tracking.signals_held("stopping once the model is written"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: one interrupt, one line
            time.sleep(0.2)
    assert capfd.readouterr().err == "r1flow: stopping once the model is written\n"


def test_outside_the_main_thread_holding_is_a_no_op():
    seen = []
    thread = threading.Thread(target=lambda: seen.append(tracking.signals_held().__enter__() is None))
    thread.start()
    thread.join()
    assert seen == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
