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


from components.evaluation.tts_config import TTSConfig
from components.search import Arm, Toolkit, fit_compute_optimal
from components.search.policy import make_queries
from components.training.loop import no_log, no_progress

from .tts import Cell, frontier, run_grid, split_dev_test, summarise, write_outputs

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
