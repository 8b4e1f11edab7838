"""Advisory file locks between r1flow processes on one machine (two pipelines at once).

`fcntl.flock` locks belong to the open file: the kernel releases them when the process ends,
however it ends (`kill -9` included), so a lock can never be left held by a dead run. The
lock files themselves are empty and harmless.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterable, Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_locks(paths: Iterable[Path]) -> Iterator[None]:
    """Hold the locks of several paths for the block, taken in sorted order (so two processes that
    want overlapping sets cannot each hold one the other waits for); a path named twice is locked once."""
    with contextlib.ExitStack() as stack:
        for path in sorted(set(paths)):
            stack.enter_context(file_lock(path))
        yield
