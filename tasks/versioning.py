"""Versions of what a stage depends on: the DVC data version, the code, the git commit.

The md5 in `<dir>.dvc` (`data.dvc` for the default `data.dir: data`) is THE data version of
a recipe. DVC's directory manifest (the `.dir` object in the DVC cache) also gives each file's
md5, so a stage's cache key can name exactly the files it reads: changing `cold_start.jsonl`
and running `dvc add data` reruns cold start but not the base model. `dir_md5` computes the
md5 `dvc add` would record for a folder without touching the project, so a rebuilt folder can
be checked against the committed version before anything is changed.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

CODE_ROOTS = ("components", "tasks", "flows")


class DataVersionError(RuntimeError):
    """The data on disk is missing or does not match its .dvc file."""


@dataclass(frozen=True)
class DataRef:
    """The curated data as a stage sees it: folder, version (the .dvc file's md5), per-file md5s."""

    path: str
    md5: str
    files: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> str:
        return str(Path(self.path) / name)

    def digest(self, names) -> str:
        """Digest of just the files `names` (the data a stage reads)."""
        missing = [n for n in names if n not in self.files]
        if missing:
            raise DataVersionError(f"{self.path}: its .dvc file records no file(s) {missing}")
        return hashlib.sha256(json.dumps({n: self.files[n] for n in sorted(names)}).encode()).hexdigest()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_dvc_file(root: Path, folder: str = "data") -> tuple[str, str]:
    """(out path, md5) recorded in `<folder>.dvc`."""
    dvc_file = root / f"{folder}.dvc"
    if not dvc_file.exists():
        raise DataVersionError(f"{dvc_file}: not found; run `r1flow data generate` to create and track the data")
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return out["path"], out["md5"]


def dir_md5(folder: Path) -> str:
    """The md5 `dvc add <folder>` records (DVC's tree object: the sorted JSON manifest of file md5s)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        tree.add(f.relative_to(folder).parts, None, HashInfo("md5", _md5(f)))
    tree.digest()
    return tree.hash_info.value


def manifest(root: Path, md5: str) -> dict[str, str]:
    """relpath -> md5 of every file in a DVC-tracked directory, from DVC's cache."""
    digest = md5.removesuffix(".dir")
    obj = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / (digest[2:] + ".dir")
    if not obj.exists():
        raise DataVersionError(f"{obj}: DVC cache object missing; run `dvc pull` (or `r1flow data generate`)")
    return {entry["relpath"]: entry["md5"] for entry in json.loads(obj.read_text())}


def data_version(root: Path, folder: str = "data") -> DataRef:
    """The DataRef of `folder`, after checking the files on disk match `<folder>.dvc`."""
    out, md5 = read_dvc_file(root, folder)
    folder = root / out
    if not folder.is_dir():
        try:
            dvc(root, "pull", "-q", f"{out}.dvc")
        except DataVersionError as e:
            raise DataVersionError(f"{folder}: missing and not on the DVC remote; `r1flow data ensure RECIPE` "
                                   f"rebuilds it ({e})") from None
    files = manifest(root, md5)
    changed = sorted(n for n, m in files.items() if not (folder / n).exists() or _md5(folder / n) != m)
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and str(p.relative_to(folder)) not in files)
    if changed or extra:
        raise DataVersionError(
            f"{folder}: files differ from {out}.dvc ({', '.join(changed + extra)}); "
            f"run `dvc add {out}` to record a new data version (or `dvc checkout {out}.dvc` to restore it)")
    return DataRef(path=str(folder), md5=md5.removesuffix(".dir"), files=files)


def dvc(root: Path, *args: str) -> str:
    """Run a DVC command in `root`; raise with DVC's own message on failure."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise DataVersionError(f"`dvc {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


@lru_cache(maxsize=None)
def code_digest(*paths: str) -> str:
    """sha256 over the Python sources under `paths` (relative to the project package root)."""
    base = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for rel in paths:
        target = base / rel
        files = [target] if target.is_file() else sorted(target.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_commit(root: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"
