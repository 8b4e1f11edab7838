"""Helper processes that decode whole batches: CPU sampling on every core (`rollout.workers`).

Threads split each matrix product of a decode step; a small policy's products are too small to
keep many threads busy, while processes split the rows and keep theirs whole. With `workers: N`
the `TransformersEngine` starts N - 1 helper processes of threads / N threads each (one on the
2-core machine), each holding a copy of the policy, and a `generate` call hands whole batches to
whichever process is free; the calling process decodes its share itself on the threads left
(threads / busy processes). On the 2-core development machine two threads already decode about
twice as fast as one, so two processes gain 1.17x there (`bench/rollout.py`, README,
Performance). A batch's tokens depend only on its rows, the weights and the per-row random keys
(`sampling.row_keys`), not on which process decodes it: the float rounding of matrix products
may differ between thread counts, but in the measured runs every token came out the same (the
recipe's GRPO ended at the bit-identical model).

* The weights travel to a helper before its first batch of every `generate` call (a
  `torch.save` of the state dict, read back with `weights_only=True`), so a helper never
  samples from weights the caller has changed since; a LoRA policy sends its merged weights.
* Helpers start in the background when the engine is made (fresh interpreters: importing torch takes a
  few seconds); until one reports ready, the caller decodes every batch itself.
* A helper exits when its pipe closes: when the engine is closed or collected, when the parent
  exits, and when the parent is killed (even with SIGKILL). It ignores Ctrl-C, which the
  parent handles. An error in a helper is raised in the caller with the helper's traceback.
"""
from __future__ import annotations

import io
import multiprocessing.connection as mpc
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

import torch

from components.modeling.models import plain_config, plain_state_dict


class WorkerError(RuntimeError):
    """A helper process failed or died while decoding a batch."""


def cpu_state_bytes(model) -> bytes:
    """The model's weights as `torch.save` bytes (a LoRA model's adapters merged, 4-bit layers dequantized)."""
    buf = io.BytesIO()
    torch.save(plain_state_dict(model), buf)
    return buf.getvalue()


class _Helper:
    """One helper: a fresh interpreter (not multiprocessing's spawn, which re-runs the caller's
    main script) talking over a socket pair."""

    def __init__(self, spec: tuple, tokenizer, engine_kwargs: dict):
        mine, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from components.generation.workers import serve; serve({theirs.fileno()})"],
            pass_fds=(theirs.fileno(),), env=env, cwd=root, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = mpc.Connection(mine.detach())
        self.send((spec, tokenizer, engine_kwargs))
        self.ready = False
        self.sent_call = -1     # the generate call whose weights this helper holds

    def poll_ready(self, timeout: float = 0.0) -> bool:
        if not self.ready and self.conn.poll(timeout):
            self.ready = self._recv()[0] == "ready"
        return self.ready

    def send(self, msg) -> None:
        try:
            self.conn.send(msg)
        except OSError:  # BrokenPipeError, ConnectionResetError
            raise self._died() from None

    def _recv(self):
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if msg[0] == "error":
            raise WorkerError(f"rollout worker (pid {self.proc.pid}) failed:\n{msg[1]}")
        return msg

    def _died(self) -> WorkerError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return WorkerError(f"rollout worker (pid {self.proc.pid}) died (exit code {code})")

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    """N - 1 helper processes beside the caller; `map` decodes batches on all N."""

    def __init__(self, model, tokenizer, workers: int, engine_kwargs: dict):
        if workers < 2:
            raise ValueError(f"a worker pool needs workers >= 2, got {workers}")
        self.threads = torch.get_num_threads()
        # the machine's threads shared out: each helper gets threads / workers, this process the rest
        spec = (plain_config(model), next(model.parameters()).dtype, getattr(model, "generation_config", None),
                max(1, self.threads // workers))
        self.helpers = [_Helper(spec, tokenizer, engine_kwargs) for _ in range(workers - 1)]
        self._call = 0
        self.helper_batches = 0  # batches the helpers decoded so far
        self._finalizer = weakref.finalize(self, _close_all, self.helpers)

    def close(self) -> None:
        self._finalizer()

    def wait_ready(self, timeout: float) -> bool:
        """Block until every helper has loaded (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        return all(h.poll_ready(max(0.0, deadline - time.monotonic())) for h in self.helpers)

    def map(self, model, batches: list, local: Callable, remote_args: Callable) -> Iterator[tuple[int, list]]:
        """Yield (batch index, result) as batches finish, in any order. `local(batch)` decodes one in
        this process; `remote_args(batch)` is what a helper's `_generate_batch` gets for it."""
        self._call += 1
        weights = None
        pending = deque(enumerate(batches))
        busy: dict[_Helper, int] = {}
        own_threads = torch.get_num_threads()
        try:
            while pending or busy:
                for h in self.helpers:
                    if pending and h not in busy and h.poll_ready():
                        fresh = h.sent_call != self._call
                        if fresh and weights is None:
                            weights = cpu_state_bytes(model)
                        i, batch = pending.popleft()
                        h.send((weights if fresh else None, *remote_args(batch)))
                        h.sent_call = self._call
                        busy[h] = i
                if pending:
                    torch.set_num_threads(max(1, self.threads // (1 + len(busy))))
                    i, batch = pending.popleft()
                    yield i, local(batch)
                else:
                    mpc.wait([h.conn for h in busy])
                for h in [h for h in busy if h.conn.poll()]:
                    i, reply = busy.pop(h), h._recv()[1]
                    self.helper_batches += 1
                    yield i, reply
        finally:
            torch.set_num_threads(own_threads)
            if busy:  # abandoned mid-call (an error, Ctrl-C): drain so the next call starts clean
                for h in list(busy):
                    try:
                        h._recv()
                    except WorkerError:
                        pass


def _close_all(helpers: list[_Helper]) -> None:
    for h in helpers:
        h.close()


def serve(fd: int) -> None:
    """A helper's main loop: build the policy's copy, then decode batches until the pipe closes.
    Each batch's reply is (its rows' results, [prompt tokens computed, prompt tokens reused])."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = mpc.Connection(fd)
    try:
        spec, tokenizer, engine_kwargs = conn.recv()
        config, dtype, generation_config, threads = spec
        torch.set_num_threads(threads)
        from transformers import AutoModelForCausalLM

        from .engine import TransformersEngine

        model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
        if generation_config is not None:  # the EOS ids the engine stops on
            model.generation_config = generation_config
        engine = TransformersEngine(model, tokenizer, **engine_kwargs)
        conn.send(("ready", None))
    except Exception:
        _send(conn, ("error", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        weights, rows, prompt_ids, params, seed = msg
        try:
            if weights is not None:
                model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
            counts = [0, 0]
            with torch.inference_mode(), torch.autocast("cpu", enabled=False):
                out = engine._generate_batch(rows, prompt_ids, params, seed, prefill=counts)
            reply = ("ok", (out, counts))
        except Exception:
            reply = ("error", traceback.format_exc())
        if not _send(conn, reply):
            return


def _send(conn, msg) -> bool:
    try:
        conn.send(msg)
        return True
    except (EOFError, OSError):  # the parent is gone
        return False
