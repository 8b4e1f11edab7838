"""What a TTS evaluation stage runs: its typed config, and one call from eval rows to files.

`evaluate_tts` takes held-out rows ({"prompt", "answer"}), a `Toolkit` (see
`components.search.policy.make_toolkit`) and a `TTSConfig`; it runs every (strategy, budget)
cell, and, when `compute_optimal` is configured, splits the rows into a dev part (where the
plan is fitted) and a disjoint test part (where every cell is evaluated), adds the fitted
budget levels as cells, and measures the frontier against best-of-N. It writes the summary,
the plot and the disagreement table under `out_dir` and returns what it measured.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from components.config import Section
from components.search import STRATEGIES, Arm, SearchConfig, Toolkit, fit_compute_optimal
from components.search.compute_optimal import DIFFICULTY
from components.search.policy import make_queries
from components.training.loop import no_log, no_progress

from .tts import Cell, frontier, run_grid, split_dev_test, summarise, write_outputs


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


def evaluate_tts(rows: list[dict], tools: Toolkit, tokenizer, cfg: TTSConfig, out_dir: str | Path, *,
                 log=no_log, progress=no_progress) -> dict:
    """Run the grid (and compute-optimal) on `rows`; write outputs; return rows, frontier, plan table, paths."""
    rows = rows[: cfg.limit] if cfg.limit else list(rows)
    if not rows:
        raise ValueError("evaluate_tts: no evaluation rows")
    queries = lambda rs: make_queries(tokenizer, [r["prompt"] for r in rs], cfg.system_prompt)  # noqa: E731
    golds = lambda rs: [str(r["answer"]) for r in rs]  # noqa: E731
    cells = [Cell(s.strategy, b, dict(s.options), s.name) for s in cfg.cells for b in s.budgets]
    test, plan, extra = rows, None, {}
    co = cfg.compute_optimal
    if co is not None:
        dev, test = split_dev_test(rows, co.dev_fraction, tools.cfg.seed)
        arms = [Arm(a.strategy, b, tuple(sorted(a.options.items()))) for a in co.arms for b in a.budgets]
        plan = fit_compute_optimal(queries(dev), golds(dev), tools, arms, co.levels, signal=co.signal,
                                   probes=co.probes, n_bins=co.bins, slack=co.slack, correctness=cfg.correctness)
        cells += [Cell("compute_optimal", lv, {"plan": plan}) for lv in sorted(plan.choices)]
        extra = {"plan": plan.table, "dev": len(dev), "test": len(test)}
    results = run_grid(queries(test), golds(test), tools, cells, correctness=cfg.correctness, log=log,
                       progress=progress)
    summary = summarise(results)
    names = {r["strategy"] for r in summary}
    front = frontier(summary) if {"best_of_n", "compute_optimal"} <= names else None
    paths = write_outputs(out_dir, results, queries(test), golds(test), extra={"frontier": front, **extra},
                          table_rows=cfg.table_rows)
    return {"rows": summary, "frontier": front, "plan": plan.table if plan else None, "paths": paths}
