"""Test-time-scaling evaluation: accuracy against compute for a grid of (strategy, budget) cells.

`run_grid` runs every cell over the same problems (one batched strategy call per cell) and
grades final answers with the ground-truth checker, which never enters the search itself.
`summarise` gives per-cell accuracy with a Wilson interval and the mean generated tokens,
policy calls and verifier calls per problem; `plot_accuracy_vs_tokens` draws one line per
strategy with error bars; `disagreements` lists problems where the cells answer differently;
`frontier` measures the tokens best-of-N needs to reach its best accuracy against the tokens
compute-optimal scaling needs to reach the same accuracy (Snell et al. 2024, Sec. 3, report
> 4x fewer). Files are written atomically to the paths given.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from components.algorithms.metrics import accuracy_with_ci
from components.io import atomic_file, write_json, write_jsonl
from components.search import Query, SearchResult, Toolkit, get_strategy
from components.search.compute_optimal import grade
from components.training.loop import no_log, no_progress


@dataclass(frozen=True)
class Cell:
    strategy: str
    budget: int
    options: dict = field(default_factory=dict, hash=False, compare=False)
    name: str = ""  # the line this cell belongs to in tables and plots (default: the strategy)

    @property
    def label(self) -> str:
        return self.name or self.strategy


@dataclass
class CellResult:
    cell: Cell
    results: list[SearchResult]
    correct: list[bool]


def run_grid(queries: list[Query], golds: list[str], tools: Toolkit, cells: list[Cell], *,
             correctness: str = "exact_int", log=no_log, progress=no_progress) -> list[CellResult]:
    """Every cell over every query; logs each cell's summary row (step = its index)."""
    if not queries or len(golds) != len(queries):
        raise ValueError(f"run_grid: need queries with one gold answer each, got {len(queries)}/{len(golds)}")
    out = []
    for k, cell in enumerate(cells):
        results = get_strategy(cell.strategy)(queries, tools, cell.budget, **cell.options)
        out.append(CellResult(cell, results, grade(results, golds, correctness)))
        row = summarise(out[-1:])[0]
        log({f"tts/{cell.label}/{key}": v for key, v in row.items() if isinstance(v, float)}, k)
        progress(k + 1, len(cells), {"cell": f"{cell.label}@{cell.budget}", "accuracy": row["accuracy"]})
    return out


def summarise(cells: list[CellResult], confidence: float = 0.95) -> list[dict]:
    rows = []
    for c in cells:
        acc, n = accuracy_with_ci(c.correct, confidence), len(c.results)
        mean = lambda f: sum(f(r.compute) for r in c.results) / n  # noqa: E731
        rows.append({"strategy": c.cell.label, "budget": c.cell.budget, "n": n, "accuracy": acc.accuracy,
                     "accuracy_se": acc.stderr, "ci_low": acc.low, "ci_high": acc.high,
                     "tokens": mean(lambda x: x.generated_tokens), "forward_passes": mean(lambda x: x.forward_passes),
                     "verifier_calls": mean(lambda x: x.verifier_calls)})
    return rows


def plot_accuracy_vs_tokens(rows: list[dict], path: str | Path, title: str = "Accuracy vs generated tokens") -> Path:
    """PNG: accuracy (Wilson interval as error bars) against mean generated tokens per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["strategy"] for r in rows):
        pts = sorted((r for r in rows if r["strategy"] == name), key=lambda r: r["tokens"])
        ax.errorbar([r["tokens"] for r in pts], [r["accuracy"] for r in pts], capsize=3, marker="o", label=name,
                    yerr=[[max(0.0, r["accuracy"] - r["ci_low"]) for r in pts],  # Wilson bounds
                          [max(0.0, r["ci_high"] - r["accuracy"]) for r in pts]])  # round off at 0 and 1
    if rows and min(r["tokens"] for r in rows) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 20, 50, 100 rather than 2x10^1
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    low, high = ax.get_ylim()
    ax.set_ylim(max(0.0, low), min(1.0, high))
    ax.set(xlabel="generated tokens per problem (mean)", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return path


def disagreements(cells: list[CellResult], queries: list[Query], golds: list[str], limit: int = 20) -> list[dict]:
    """Problems on which the cells' answers differ, first `limit` in problem order."""
    out = []
    for i, (q, gold) in enumerate(zip(queries, golds)):
        answers = {f"{c.cell.label}@{c.cell.budget}": c.results[i].answer for c in cells}
        if len(set(answers.values())) > 1:
            correct = {f"{c.cell.label}@{c.cell.budget}": c.correct[i] for c in cells}
            out.append({"prompt": q.prompt, "gold": str(gold), "answers": answers, "correct": correct})
            if len(out) == limit:
                break
    return out


def frontier(rows: list[dict], baseline: str = "best_of_n", target: str = "compute_optimal") -> dict:
    """Tokens the baseline needs for its best accuracy vs tokens the target needs for the same accuracy."""
    base = [r for r in rows if r["strategy"] == baseline]
    tgt = [r for r in rows if r["strategy"] == target]
    if not base or not tgt:
        raise ValueError(f"frontier: need rows of both {baseline!r} and {target!r}")
    best_acc = max(r["accuracy"] for r in base)
    b = min((r for r in base if r["accuracy"] == best_acc), key=lambda r: r["tokens"])
    reached = [r for r in tgt if r["accuracy"] >= best_acc]
    t = min(reached, key=lambda r: r["tokens"]) if reached else None
    return {"baseline": baseline, "target": target, "accuracy": best_acc, "baseline_budget": b["budget"],
            "baseline_tokens": b["tokens"], "target_budget": t["budget"] if t else None,
            "target_tokens": t["tokens"] if t else None,
            "target_best_accuracy": max(r["accuracy"] for r in tgt),
            "ratio": b["tokens"] / t["tokens"] if t and t["tokens"] > 0 else None}


def split_dev_test(rows: list[dict], dev_fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint dev/test split by a hash of (seed, prompt): the same prompt always lands on the same side."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    side = lambda r: hashlib.sha256(f"{seed}:{r['prompt']}".encode()).digest()[0] < 256 * dev_fraction  # noqa: E731
    dev, test = [r for r in rows if side(r)], [r for r in rows if not side(r)]
    if not dev or not test:
        raise ValueError(f"split_dev_test: {len(rows)} rows give an empty split; use more rows")
    return dev, test


def write_outputs(folder: str | Path, cells: list[CellResult], queries: list[Query], golds: list[str], *,
                  extra: dict | None = None, table_rows: int = 20) -> dict[str, Path]:
    """summary.json (rows + `extra`), accuracy_vs_tokens.png, disagreements.jsonl under `folder`."""
    folder = Path(folder)
    rows = summarise(cells)
    paths = {"summary": folder / "summary.json", "plot": folder / "accuracy_vs_tokens.png",
             "disagreements": folder / "disagreements.jsonl"}
    write_json(paths["summary"], {"rows": rows, **(extra or {})})
    plot_accuracy_vs_tokens(rows, paths["plot"])
    write_jsonl(paths["disagreements"], disagreements(cells, queries, golds, table_rows))
    return paths
