"""Versions of what a stage depends on: the DVC data version, the code, the git commit.

The code a stage depends on is found, not listed: `module_sources` follows the project imports
of the stage's module (statically, with `ast`, including imports inside functions) to every
project file it can run, so editing the search strategies reruns the TTS evaluation but not
pretraining, and a newly imported helper is covered without anyone remembering to add it.

The md5 in `<dir>.dvc` (`data.dvc` for the default `data.dir: data`) is THE data version of
a recipe. DVC's directory manifest (the `.dir` object in the DVC cache) also gives each file's
md5, so a stage's cache key can name exactly the files it reads: changing `cold_start.jsonl`
and running `dvc add data` reruns cold start but not the base model. `dir_md5` computes the
md5 `dvc add` would record for a folder without touching the project, so a rebuilt folder can
be checked against the committed version before anything is changed.
"""
from __future__ import annotations

import ast
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


def data_section(data) -> dict:
    """The fields of a recipe's `data` section that decide what `r1flow data generate` builds (all but `dir`)."""
    return json.loads(json.dumps(data.model_dump(mode="json", exclude={"dir"}), sort_keys=True))


def record_data_section(root: Path, data) -> None:
    """Write the section that built `<data.dir>/` into `<data.dir>.dvc` (`meta:`, which DVC keeps and ignores)."""
    from components.io import atomic_file

    dvc_file = root / f"{data.dir}.dvc"
    text = dvc_file.read_text()
    tree = yaml.safe_load(text)
    tree["meta"] = {**(tree.get("meta") or {}), "r1flow_data": data_section(data)}
    with atomic_file(dvc_file, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)


def check_data_section(root: Path, data, recipe: str = "RECIPE") -> None:
    """Refuse a recipe whose `data` section differs from the one recorded with its data version: the
    stages would read the recorded files while the run's parameters claimed the recipe's values."""
    dvc_file = root / f"{data.dir}.dvc"
    if not dvc_file.exists():
        return  # read_dvc_file says what to do
    recorded = ((yaml.safe_load(dvc_file.read_text()) or {}).get("meta") or {}).get("r1flow_data")
    if recorded is None:
        return  # a version recorded before the section was
    wanted = data_section(data)
    recorded = {**data_section(type(data)()), **recorded}  # a field added since: its default built that version
    differ = sorted(k for k in {*wanted, *recorded} if wanted.get(k) != recorded.get(k))
    if differ:
        asked = ", ".join(f"data.{k}={json.dumps(wanted.get(k))}" for k in differ)
        built = ", ".join(f"{json.dumps(recorded.get(k))}" for k in differ)
        raise DataVersionError(
            f"{dvc_file.name}: the recipe asks for {asked}, but {data.dir}/ was built with {built}; run `r1flow "
            f"data generate {recipe}` to build and record that data (set data.dir to a new folder to keep both)")


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
            dvc(root, "pull", f"{out}.dvc")
        except DataVersionError as e:
            raise DataVersionError(f"{folder}: missing and not on the DVC remote; `r1flow data ensure <recipe>` "
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
    """Run a DVC command in `root`; raise with DVC's own message on failure (so never `-q`: it silences errors too)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise DataVersionError(f"`dvc {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


PROJECT_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def code_digest(*paths: str) -> str:
    """sha256 over the Python sources under `paths` (files or folders, relative to the project root)."""
    h = hashlib.sha256()
    for rel in sorted(set(paths)):
        target = PROJECT_ROOT / rel
        files = [target] if target.is_file() else sorted(target.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(PROJECT_ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


# The orchestration that calls stages (and the registry that finds them) is not part of what a stage runs.
ORCHESTRATION = frozenset({"tasks/pipeline.py", "tasks/stage_task.py", "tasks/stages/__init__.py"})


def _computes(rel: str) -> bool:
    """Whether a file's code computes a stage's result: components/ and the stage modules do; the rest
    of tasks/ (how a stage is declared, keyed, tracked, saved) only wraps them, and is followed
    for what it imports but not hashed, so editing the framework does not retrain every stage."""
    return rel.startswith(("components/", "tasks/stages/", "flows/"))


@lru_cache(maxsize=None)
def module_sources(module: str) -> tuple[str, ...]:
    """The project files (relative paths) whose code `module` runs to compute a result: its own
    file, the `__init__.py` of its packages, and the same for every project module it imports,
    transitively (`ORCHESTRATION` is not followed; framework files in tasks/ are followed, not kept)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        for rel in _files_of(name):
            if rel not in seen and rel not in ORCHESTRATION:
                seen.add(rel)
                todo.extend(_imports(rel))
    return tuple(sorted(rel for rel in seen if _computes(rel)))


@lru_cache(maxsize=None)
def _files_of(module: str) -> tuple[str, ...]:
    """The file of `module` and the __init__.py of each package on its dotted path (those that exist)."""
    parts, files = module.split("."), []
    for i in range(1, len(parts) + 1):
        for candidate in (Path(*parts[:i]) / "__init__.py", Path(*parts[:i]).with_suffix(".py")):
            if (PROJECT_ROOT / candidate).is_file() and (i == len(parts) or candidate.name == "__init__.py"):
                files.append(str(candidate))
    return tuple(files)


@lru_cache(maxsize=None)
def _imports(rel: str) -> tuple[str, ...]:
    """Project modules imported anywhere in file `rel` (`from x import y` also tries the module x.y).
    Parsed once per process: every stage's closure shares most files."""
    package = list(Path(rel).parent.parts)
    names = []
    for node in _statements(ast.parse((PROJECT_ROOT / rel).read_text(), rel).body):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return tuple(n for n in names if n.split(".")[0] in CODE_ROOTS)


def _statements(body: list[ast.stmt]):
    """Every statement, nested ones included (imports are statements: expressions need no visit)."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, None) or [])


def git_commit(root: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"
