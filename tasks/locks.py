"""Advisory file locks between r1flow processes on one machine (two pipelines at once).

`fcntl.flock` locks belong to the open file: the kernel releases them when the process ends,
however it ends (`kill -9` included), so a lock can never be left held by a dead run. The
lock files themselves are empty and harmless.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


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
