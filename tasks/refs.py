"""The small records that travel between tasks (never models or dataframes)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelRef:
    """A model a stage produced or started from: where it is and exactly which it is."""

    uri: str                      # local HF directory, or a hub id for a starting model
    digest: str                   # sha256 of the directory's files (or "hub:<id>@<rev>")
    stage: str
    run_id: str | None = None     # MLflow run that produced it
    registered: str | None = None  # models:/name/version


@dataclass(frozen=True)
class EvalRef:
    """Held-out metrics of one model."""

    model: ModelRef
    metrics: dict = field(default_factory=dict)
    run_id: str | None = None
