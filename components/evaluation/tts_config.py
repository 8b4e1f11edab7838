"""The `tts_eval` recipe section: the grid of search strategies and budgets, and compute-optimal
scaling. Apart from `tts_eval.py` (which runs models) so that a recipe loads without torch."""
from __future__ import annotations

import inspect

from pydantic import Field, field_validator, model_validator

from components.config import Section
from components.search import STRATEGIES, SearchConfig
from components.search.compute_optimal import DIFFICULTY


class CellSpec(Section):
    strategy: str = Field(description="A strategy of components.search.STRATEGIES.")
    budgets: list[int] = Field(min_length=1, description="Budgets to run it at (each >= 1); see the registry.")
    options: dict = Field(default_factory=dict, description="Keyword options of the strategy (e.g. width, agg).")
    name: str = Field("", description="Line name in tables and plots (default: the strategy).")

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown search strategy {v!r}; choose one of {sorted(STRATEGIES)}")
        if v == "compute_optimal":
            raise ValueError("compute_optimal is configured in its own section (it needs a fitted plan)")
        return v

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"budgets must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _known_options(self) -> "CellSpec":
        params = inspect.signature(STRATEGIES[self.strategy]).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return self
        known = sorted(set(params) - {"queries", "tools", "budget"})
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"options: {self.strategy} has no option(s) {unknown}; its options: {known or 'none'}")
        return self


class ComputeOptimalConfig(Section):
    probes: int = Field(4, ge=1, le=64, description="Samples per problem that estimate its difficulty.")
    signal: str = Field("agreement", description=f"Difficulty signal: one of {sorted(DIFFICULTY)}.")
    bins: int = Field(3, ge=1, le=20, description="Difficulty bins (quantiles of the dev signal).")
    levels: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1,
                              description="Budget levels: most policy calls per problem, probes included.")
    arms: list[CellSpec] = Field(
        default_factory=lambda: [CellSpec(strategy="self_consistency", budgets=[1, 4, 8, 16]),
                                 CellSpec(strategy="best_of_n", budgets=[4, 8, 16]),
                                 CellSpec(strategy="self_refine", budgets=[1])],
        description="The strategies and budgets a difficulty bin may be given.")
    slack: float = Field(0.0, ge=0.0, le=1.0, description="A cheaper arm within this dev accuracy of the best wins.")
    dev_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="Share of the rows the plan is fitted on.")

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        if v not in DIFFICULTY:
            raise ValueError(f"unknown difficulty signal {v!r}; choose one of {sorted(DIFFICULTY)}")
        return v


class TTSConfig(Section):
    search: SearchConfig = Field(default_factory=SearchConfig, description="Decoding settings shared by strategies.")
    cells: list[CellSpec] = Field(
        default_factory=lambda: [CellSpec(strategy="greedy", budgets=[1]),
                                 CellSpec(strategy="self_consistency", budgets=[2, 4, 8])],
        min_length=1, description="The grid: each strategy at each of its budgets (verifier-free by default).")
    compute_optimal: ComputeOptimalConfig | None = Field(None, description="Fit and evaluate compute-optimal scaling.")
    limit: int = Field(0, ge=0, description="Use only the first N eval rows (0: all).")
    table_rows: int = Field(20, ge=0, description="Rows of the disagreement table.")
    correctness: str = Field("exact_int", description="Reward function that grades final answers.")
    system_prompt: str | None = Field(None, description="System prompt of the chat rendering.")
