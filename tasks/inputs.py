"""Inputs a user names on the command line (or as deployment parameters), resolved to records.

A model is a local Hugging Face directory, an MLflow `runs:/…` URI or a registry
`models:/NAME@ALIAS` (downloaded once into `.r1flow/downloads`); a dataset is a local file.
Everything is checked here, before any flow starts, so a typo is one clear line.
"""
from __future__ import annotations

import json
from pathlib import Path

from components.data.loaders import load_records
from components.io import digest_path
from tasks import tracking
from tasks.refs import DatasetRef, ModelRef
from tasks.stage import Stage

DATASET_INPUTS = ("dataset",)
ARCHITECTURE_KINDS = {"ForSequenceClassification": "sequence_classifier",
                      "ForTokenClassification": "token_classifier"}


def resolve_inputs(spec: Stage, given: dict[str, str], root: str | Path) -> dict:
    """{input name: record} for `spec`, from {input name: path or URI}; raises ValueError naming the input."""
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        raise ValueError(f"{spec.name}: unknown input(s) {unknown}; it takes {list(spec.inputs) or 'none'}")
    missing = [n for n in spec.inputs if n not in given and n not in spec.optional]
    if missing:
        flags = " ".join(f"--{n.replace('_', '-')} …" for n in missing)
        raise ValueError(f"{spec.name}: needs {', '.join(missing)} ({flags})")
    return {name: (resolve_dataset(value, name) if name in DATASET_INPUTS else resolve_model(value, Path(root), name))
            for name, value in given.items()}


def resolve_model(uri: str, root: Path, what: str = "model") -> ModelRef:
    """A model given as a local directory, an MLflow `runs:/…` URI or a registry `models:/NAME@ALIAS`."""
    path = Path(uri).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"--{what.replace('_', '-')}: {uri} is a directory without a config.json "
                             "(not a Hugging Face model directory)")
        return ModelRef(uri=str(path.resolve()), digest=digest_path(path), stage="given", kind=model_kind(path))
    if not uri.startswith(("runs:/", "models:/")):
        raise ValueError(f"--{what.replace('_', '-')}: {uri!r} is neither a directory nor a runs:/ or models:/ URI")
    uri = tracking.resolve_latest(uri, what)  # models:/NAME/latest names a version that moves: pin it now
    local = tracking.download_model(uri, root / ".r1flow" / "downloads", what)
    return ModelRef(uri=str(local), digest=digest_path(local), stage="given", kind=model_kind(local), registered=uri)


def resolve_dataset(path: str, what: str = "dataset", schema: str = "sft") -> DatasetRef:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--{what}: {path} is not a file")
    rows = load_records(str(file), schema)
    return DatasetRef(uri=str(file.resolve()), digest=digest_path(file), rows=len(rows), stage="given", schema=schema)


def model_kind(folder: Path) -> str:
    """causal_lm unless config.json names a classification architecture."""
    try:
        architectures = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return "causal_lm"
    for suffix, kind in ARCHITECTURE_KINDS.items():
        if any(a.endswith(suffix) for a in architectures):
            return kind
    return "causal_lm"
