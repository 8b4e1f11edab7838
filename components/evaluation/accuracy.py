"""Held-out evaluation: greedy pass@1 accuracy, format rate and completion length.

Generation goes through the rollout engine and scoring through the reward registry, so
evaluation measures exactly what the RL stages optimise.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field

from components.algorithms.metrics import accuracy_with_ci
from components.config import RolloutConfig
from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine
from components.rewards import get_reward


@dataclass
class EvalResult:
    metrics: dict[str, float]
    table: list[dict] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)  # per problem, in the order of the rows (paired comparisons)


def evaluate(model, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_size: int = 128,
             rollout=None, correctness: str = "exact_int", system_prompt: str | None = None, table_rows: int = 32,
             progress=False) -> EvalResult:
    """Score greedy completions of `rows` ({"prompt", "answer", optional "level"}).

    `rollout` (a RolloutConfig) picks the backend; without it the transformers engine runs with
    `batch_size`. `progress`: False, True (a tqdm bar) or a `progress(done, total, metrics)` callable.
    """
    if not rows:
        raise ValueError("evaluation set is empty")
    rollout_cfg = rollout or RolloutConfig(batch_size=batch_size)
    prompts = [render_prompt(tokenizer, r["prompt"], system_prompt) for r in rows]
    with closing(make_engine(rollout_cfg.backend, model, tokenizer, **rollout_cfg.engine_kwargs())) as engine:
        rollout = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens),
                                  progress=progress)
    answers = [r["answer"] for r in rows]
    correct = get_reward(correctness)(rollout.texts, answer=answers)
    formatted = get_reward("format")(rollout.texts, answer=answers)
    lengths = [len(ids) for ids in rollout.completion_ids]
    metrics = _summarise(correct, formatted, lengths, [r.get("level") for r in rows])
    metrics["tokens_per_s"] = rollout.tokens_per_s()
    table = [
        {"prompt": r["prompt"], "answer": str(r["answer"]), "completion": text, "correct": float(c),
         "format": float(f), "level": r.get("level")}
        for r, text, c, f in zip(rows[:table_rows], rollout.texts, correct, formatted)
    ]
    return EvalResult(metrics=metrics, table=table, correct=[float(c > 0.5) for c in correct])


def _summarise(correct, formatted, lengths, levels) -> dict[str, float]:
    correct = [c > 0.5 for c in correct]  # a partial-credit score counts as right above one half, everywhere
    acc = accuracy_with_ci(correct)
    metrics = {"accuracy": acc.accuracy, "accuracy_se": acc.stderr, "accuracy_ci_low": acc.low,
               "accuracy_ci_high": acc.high, "format_rate": sum(formatted) / len(formatted),
               "mean_length": sum(lengths) / len(lengths), "n": float(len(correct))}
    by_level = defaultdict(list)
    for lv, c in zip(levels, correct):
        if lv is not None:
            by_level[lv].append(c)
    for lv, cs in sorted(by_level.items()):
        metrics[f"accuracy_level_{lv}"] = sum(cs) / len(cs)
    return metrics
