"""File locks between r1flow processes: what keeps two pipelines from training into one folder."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tasks import locks

HOLD = """
import os, sys, time
from pathlib import Path
from tasks.locks import file_lock

def say(text):  # atomic: the test never reads a half-written marker
    Path(sys.argv[2] + ".tmp").write_text(text)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])

with file_lock(Path(sys.argv[1])):
    say("held")
    time.sleep(1.0)
    say("done")  # still holding the lock
"""


def test_file_locks_waits_for_a_lock_another_process_holds(tmp_path):
    a, b, marker = tmp_path / "a.lock", tmp_path / "b.lock", tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(b), str(marker)], cwd=Path(__file__).parents[2])
    while not marker.exists():
        time.sleep(0.01)
    with locks.file_locks([a, b]):
        assert marker.read_text() == "done"  # got b only once the other process let it go
    assert child.wait(timeout=30) == 0


def test_file_locks_takes_each_path_once_in_sorted_order(tmp_path, monkeypatch):
    taken = []
    real = locks.file_lock

    def recording(path):
        taken.append(path.name)
        return real(path)

    monkeypatch.setattr(locks, "file_lock", recording)
    with locks.file_locks([tmp_path / "c", tmp_path / "a", tmp_path / "c", tmp_path / "b"]):
        pass
    assert taken == ["a", "b", "c"]  # a path named twice would deadlock on itself (flock per open file)
