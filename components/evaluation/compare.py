"""Side-by-side comparison of alignment methods: one table row per method and a PNG plot.

Each method's result dict (the stage builds it after training and evaluating the method) holds:

    preference_before, preference_after  true preference rate (0..1) of the starting and the aligned policy
    preference_n                         completions each rate was measured on
    accuracy_before, accuracy_after      held-out reasoning accuracy (0..1)
    kl                                   KL(pi || pi_ref) of the aligned policy (nats per completion)
    rm_score, rm_score_before            mean reward-model score of the aligned and the starting policy's
                                         greedy completions
    wall_s                               training wall time (seconds)
    tokens_generated                     completion tokens sampled while training
    preference_gain_se                   (optional) the standard error (0..1) of the gain paired prompt by
                                         prompt: both policies answered the same prompts
                                         (components/evaluation/paired.py)

Derived columns: `rm_score_change` (what the method moved the score it was trained on, for the
online methods); `preference_gain` (points) and its standard error: the paired one when the result
carries it, else as for two independent proportions, sqrt(p0 (1 - p0) / n + p1 (1 - p1) / n)
(conservative when both rates come from the same prompts, whose errors are positively
correlated), and `paired` saying which; `gain_in_se`; `accuracy_change` (points); and
`meets_target`: gain > `min_gain_se` standard errors with an accuracy drop of at most
`max_accuracy_drop` points (issue 8's targets: 3 and 2).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from components.io import atomic_file

REQUIRED = ("preference_before", "preference_after", "preference_n", "accuracy_before", "accuracy_after", "kl",
            "rm_score", "rm_score_before", "wall_s", "tokens_generated")
RATES = ("preference_before", "preference_after", "accuracy_before", "accuracy_after")
COLUMNS = ("method", "preference_before", "preference_after", "preference_gain", "preference_gain_se", "paired",
           "gain_in_se", "accuracy_before", "accuracy_after", "accuracy_change", "kl", "rm_score", "rm_score_change",
           "wall_s", "tokens_generated", "meets_target")


def comparison_rows(results: Mapping[str, Mapping[str, float]], *, min_gain_se: float = 3.0,
                    max_accuracy_drop: float = 2.0) -> list[dict]:
    """One row per method (in the given order) with the columns of `COLUMNS`."""
    if not results:
        raise ValueError("comparison: no method results")
    return [_row(method, _checked(method, r), min_gain_se, max_accuracy_drop) for method, r in results.items()]


def _checked(method: str, r: Mapping[str, float]) -> dict[str, float]:
    missing = [k for k in REQUIRED if k not in r]
    if missing:
        raise ValueError(f"comparison: method {method!r} lacks {missing}")
    out = {}
    for k in REQUIRED + (("preference_gain_se",) if "preference_gain_se" in r else ()):
        v = r[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"comparison: method {method!r}: {k} must be a finite number, got {v!r}")
        out[k] = float(v)
    bad = [k for k in RATES + ("preference_gain_se",) if k in out and not 0.0 <= out[k] <= 1.0]
    if bad or out["preference_n"] < 1:
        raise ValueError(f"comparison: method {method!r}: rates must lie in [0, 1] and preference_n >= 1 "
                         f"({', '.join(f'{k}={out[k]}' for k in bad + ['preference_n'])})")
    return out


def _row(method: str, r: dict[str, float], min_gain_se: float, max_accuracy_drop: float) -> dict:
    p0, p1, n = r["preference_before"], r["preference_after"], r["preference_n"]
    gain = 100.0 * (p1 - p0)
    paired = "preference_gain_se" in r
    se = 100.0 * (r["preference_gain_se"] if paired else math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n))
    in_se = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    accuracy_change = 100.0 * (r["accuracy_after"] - r["accuracy_before"])
    return {"method": method, "preference_before": p0, "preference_after": p1, "preference_gain": gain,
            "preference_gain_se": se, "paired": paired, "gain_in_se": in_se, "accuracy_before": r["accuracy_before"],
            "accuracy_after": r["accuracy_after"], "accuracy_change": accuracy_change, "kl": r["kl"],
            "rm_score": r["rm_score"], "rm_score_change": r["rm_score"] - r["rm_score_before"], "wall_s": r["wall_s"],
            "tokens_generated": int(r["tokens_generated"]),
            "meets_target": bool(in_se > min_gain_se and accuracy_change >= -max_accuracy_drop)}


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (for the README and an MLflow text artifact)."""
    head = ["method", "pref. gain (pts ± SE)", "gain / SE", "accuracy Δ (pts)", "KL", "RM score (Δ)", "wall (s)",
            "tokens", "target met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        se = f"{r['preference_gain_se']:.1f}" + (" paired" if r["paired"] else "")
        cells = [r["method"], f"{r['preference_gain']:+.1f} ± {se}", f"{r['gain_in_se']:.1f}",
                 f"{r['accuracy_change']:+.1f}", f"{r['kl']:.3f}", f"{r['rm_score']:.2f} ({r['rm_score_change']:+.2f})",
                 f"{r['wall_s']:.0f}", f"{r['tokens_generated']:,}", "yes" if r["meets_target"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PANELS = (("preference_gain", "true preference gain (pts, ±1 SE)"), ("accuracy_change", "reasoning accuracy Δ (pts)"),
          ("kl", "KL to reference (nats)"), ("rm_score_change", "reward-model score Δ"), ("wall_s", "wall time (s)"),
          ("tokens_generated", "tokens generated"))


def plot_comparison(rows: list[dict], path: str | Path) -> Path:
    """A 2 x 3 grid of bar charts, one panel per measure, methods side by side; PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("comparison: no rows to plot")
    methods = [r["method"] for r in rows]
    fig = Figure(figsize=(12, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        values = [r[key] for r in rows]
        errors = [r["preference_gain_se"] for r in rows] if key == "preference_gain" else None
        colors = ["tab:green" if r["meets_target"] else "tab:gray" for r in rows]
        ax.bar(methods, values, yerr=errors, capsize=4, color=colors)
        ax.set_title(title, fontsize=10)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("Alignment methods from the same policy and data (green: target met)")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return path
