"""The small records that travel between tasks (never models or dataframes)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetRef:
    """A derived dataset: content-addressed file recorded in MLflow."""

    uri: str
    digest: str
    rows: int


@dataclass(frozen=True)
class ModelRef:
    """A model a stage produced or started from: where it is and exactly which it is."""

    uri: str                      # local HF directory, or a hub id for a starting model
    digest: str                   # sha256 of the directory's files (or "hub:<id>@<rev>")
    stage: str
    run_id: str | None = None     # MLflow run that produced it
    registered: str | None = None  # models:/name/version
    dataset: DatasetRef | None = None  # data derived from this model for the next stage (rejection sampling)

    @property
    def lineage_digest(self) -> str:
        """What downstream stages depend on: the weights, and derived data riding along."""
        return self.digest + (f"+{self.dataset.digest}" if self.dataset else "")


@dataclass(frozen=True)
class EvalRef:
    """Held-out metrics of one model."""

    model: ModelRef
    metrics: dict = field(default_factory=dict)
    run_id: str | None = None
