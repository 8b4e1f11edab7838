"""The small records that travel between stages (never models or dataframes).

A record says where an artifact is and exactly which one it is (its digest); cache keys are
built from digests, and MLflow records the run that produced each one (lineage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# What a model directory holds, so a stage loads it with the right Auto class.
MODEL_KINDS = ("causal_lm", "sequence_classifier", "token_classifier")


@dataclass(frozen=True)
class ModelRef:
    """A model a stage produced or started from."""

    uri: str                       # local HF directory, or a hub id for a starting model
    digest: str                    # sha256 of the directory's files (or "hub:<id>@<rev>")
    stage: str                     # the stage that produced it ("given" for a model named by the user)
    kind: str = "causal_lm"        # one of MODEL_KINDS
    run_id: str | None = None      # MLflow run that produced it
    registered: str | None = None  # models:/name/version


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a stage derived (e.g. rejection samples): a content-addressed file logged in MLflow."""

    uri: str
    digest: str                    # sha256 of the file's bytes
    rows: int
    stage: str
    schema: str = "sft"            # the loader schema its rows follow
    run_id: str | None = None


@dataclass(frozen=True)
class EvalRef:
    """Held-out metrics of one model."""

    model: ModelRef
    metrics: dict = field(default_factory=dict)
    run_id: str | None = None
    digest: str = ""               # of the metrics (an evaluation is an input of later stages, e.g. reports)
    files: dict = field(default_factory=dict)  # name -> local path of report files (plots, tables)
    scores: str = ""               # per_problem.json: {"eval_set": digest of the rows, "correct": [0/1 per row]}


Ref = ModelRef | DatasetRef | EvalRef


def ref_digest(value) -> str | list | None:
    """What a cache key records of an input: its digest (lists of records element-wise)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [ref_digest(v) for v in value]
    return value.digest
