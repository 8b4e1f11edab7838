"""Run `r1flow ARGS` in this process and SIGKILL it at a chosen point of a training stage.

    python -m tests.flows.kill_stage after-update 3 -- stage cold_start configs/tiny.yaml --policy DIR
    python -m tests.flows.kill_stage during-save 4 -- stage cold_start …

`after-update N`: right after the N-th optimizer step (between checkpoints: the steps since the
last checkpoint are lost). `during-save N`: while the checkpoint of step N is being written (its
weights file is on disk, its optimizer state and meta are not). The kill is a real SIGKILL of
this process: no `finally`, no atexit, nothing flushed, exactly as `kill -9` from outside.
"""
from __future__ import annotations

import os
import signal
import sys

from components.training import loop


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_update(n: int) -> None:
    step = loop.Trainer.step

    def counted(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        if self.updates == n:
            die()
        return out
    loop.Trainer.step = counted


def kill_during_save(n: int) -> None:
    save_file = loop.save_file

    def half_written(tensors, path, *args, **kwargs):
        save_file(tensors, path, *args, **kwargs)
        if f"step-{n:08d}" in str(path):
            die()
    loop.save_file = half_written


if __name__ == "__main__":
    mode, n, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: kill_stage MODE N -- r1flow args"
    {"after-update": kill_after_update, "during-save": kill_during_save}[mode](int(n))
    from flows.cli import app

    app(args)
