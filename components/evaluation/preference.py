"""The true preference rate: how often a model's greedy replies follow the house rules.

Scored with the known-truth function of the default task (`components.data.house_rules`), on
held-out prompts of the three kinds (marked, redundant, plain). It is what alignment is judged
by, and it never trains anything.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import closing

from components.algorithms.metrics import accuracy_with_ci
from components.config import RolloutConfig
from components.data import house_rules as hr
from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine


def preference_metrics(prompts: list[str], completions: list[str], kinds: list[str | None],
                       follows: list[bool]) -> dict[str, float]:
    """preference_rate (± s.e.) over all prompts and per kind, the mean graded score, refusal rates;
    `follows`: `house_rules.follows_rules` of each (prompt, completion)."""
    rate = accuracy_with_ci(follows)
    metrics = {"preference_rate": rate.accuracy, "preference_rate_se": rate.stderr, "preference_n": float(len(follows)),
               "preference_score": sum(hr.true_preference(p, c) for p, c in zip(prompts, completions)) / len(prompts)}
    by_kind = defaultdict(list)
    for kind, ok in zip(kinds, follows):
        if kind is not None:
            by_kind[kind].append(ok)
    metrics.update({f"preference_rate_{k}": sum(v) / len(v) for k, v in sorted(by_kind.items())})
    marked = [hr.declines(c) for p, c in zip(prompts, completions) if hr.is_marked(p)]
    others = [hr.declines(c) for p, c in zip(prompts, completions) if not hr.is_marked(p)]
    if marked:
        metrics["refusal_rate_marked"] = sum(marked) / len(marked)
    if others:
        metrics["refusal_rate_unmarked"] = sum(others) / len(others)
    return metrics


def evaluate_preference(model, tokenizer, rows: list[dict], *, max_new_tokens: int, rollout=None,
                        system_prompt: str | None = None, table_rows: int = 0, progress=False):
    """(metrics, table, follows) of greedy replies to `rows` ({"prompt", optional "kind"}); `follows`: whether
    each reply follows the house rules, in the rows' order (for paired comparisons of two models)."""
    if not rows:
        raise ValueError("preference evaluation set is empty")
    rollout_cfg = rollout or RolloutConfig(batch_size=128)
    prompts = [r["prompt"] for r in rows]
    with closing(make_engine(rollout_cfg.backend, model, tokenizer, **rollout_cfg.engine_kwargs())) as engine:
        out = engine.generate([render_prompt(tokenizer, p, system_prompt) for p in prompts],
                              SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens), progress=progress)
    follows = [hr.follows_rules(p, c) for p, c in zip(prompts, out.texts)]
    metrics = preference_metrics(prompts, out.texts, [r.get("kind") for r in rows], follows)
    table = [{"prompt": p, "kind": r.get("kind"), "completion": c, "true_preference": hr.true_preference(p, c)}
             for p, r, c in zip(prompts[:table_rows], rows, out.texts)]
    return metrics, table, follows
