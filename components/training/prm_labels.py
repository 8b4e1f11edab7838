"""Step labels for a process reward model from Monte-Carlo rollouts of the policy (Math-Shepherd).

Wang et al. 2024 ("Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human
Annotations", §3.3): a step is good if the policy, continuing from the solution up to and
including it, can still reach the right answer. `label_steps`, read top to bottom:

  1. sample `solutions_per_prompt` solutions of every prompt with the rollout engine (seeded);
  2. split each into steps (`components.data.steps.split_steps`, separator `sep`);
  3. for every step prefix except the last of each solution, sample `rollouts_per_step`
     continuations: ONE engine call over all distinct prefixes of all solutions (a prefix
     shared by two solutions of the same prompt is rolled out once), seeded;
  4. check each prefix + continuation with the `verifier` reward (e.g. ``exact_int``: a regex
     on the text; model output is never executed) and label the step with the `label` rule:
     ``hard`` = 1 if any continuation is correct (Math-Shepherd's HE), ``soft`` = the fraction
     correct (SE).

Where this departs from the paper: the last step of a solution is labelled by the verifier on
the solution itself (its own continuation is the end of the sample), without rollouts; a
solution that stopped without an answer (e.g. at the token limit) thus ends in a 0-labelled step.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

from components.data.prompts import render_prompt
from components.data.steps import split_steps
from components.generation import SamplingParams
from components.rewards import get_reward
from components.seeds import derive_seed

LabelRule = Callable[[int, int], float]  # (correct continuations, rollouts) -> label in [0, 1]
LABEL_RULES: dict[str, LabelRule] = {
    "hard": lambda correct, m: float(correct > 0),
    "soft": lambda correct, m: correct / m,
}


def get_label_rule(name: str) -> LabelRule:
    try:
        return LABEL_RULES[name]
    except KeyError:
        raise ValueError(f"unknown step label rule {name!r}; valid names: {', '.join(sorted(LABEL_RULES))}") from None


@dataclass
class LabelStats:
    prompts: int
    solutions: int
    solutions_correct: int
    steps: int               # labelled steps (every step of every non-empty solution)
    rollout_prefixes: int    # distinct prefixes rolled out
    rollouts: int            # continuations sampled
    tokens: int              # tokens generated (solutions + continuations)
    mean_label: float
    seconds: float

    def as_metrics(self) -> dict[str, float]:
        return {f"labels/{k}": float(v) for k, v in asdict(self).items()}


def label_steps(engine, tokenizer, rows: list[dict], cfg, seed: int) -> tuple[list[dict], LabelStats]:
    """Labelled solutions ``{"prompt", "answer", "completion", "steps", "labels", "correct"}`` for rows
    ``{"prompt", "answer"}`` (cfg: a PRMConfig). Same engine weights, rows and seed -> same labels."""
    start = time.perf_counter()
    _check_rows(rows)
    verify = _verifier(cfg.verifier)
    prompts = [render_prompt(tokenizer, r["prompt"], cfg.system_prompt) for r in rows]
    sols = engine.generate(prompts, _params(cfg, cfg.solutions_per_prompt, derive_seed(seed, "prm", "solutions")))
    solutions = [(i, text) for i, text in zip(sols.prompt_index, sols.texts) if split_steps(text, cfg.sep)]
    correct = verify([t for _, t in solutions], [rows[i]["answer"] for i, _ in solutions])

    prefixes: dict[tuple[int, str], int] = {}  # (row, prefix) -> index of its rollout group
    for i, text in solutions:
        steps = split_steps(text, cfg.sep)
        for k in range(1, len(steps)):
            prefixes.setdefault((i, "".join(steps[:k])), len(prefixes))
    m, n_correct, tokens = cfg.rollouts_per_step, [], sols.num_generated_tokens
    if prefixes:
        keys = list(prefixes)
        cont = engine.generate([prompts[i] + p for i, p in keys], _params(cfg, m, derive_seed(seed, "prm", "rollouts")))
        ok = verify([keys[g][1] + t for g, t in zip(cont.prompt_index, cont.texts)],
                    [rows[keys[g][0]]["answer"] for g in cont.prompt_index])
        n_correct = [0] * len(keys)
        for g, c in zip(cont.prompt_index, ok):
            n_correct[g] += c >= 1.0
        tokens += cont.num_generated_tokens

    rule, out = get_label_rule(cfg.label), []
    for (i, text), final_ok in zip(solutions, correct):
        steps = split_steps(text, cfg.sep)
        labels = [rule(n_correct[prefixes[(i, "".join(steps[:k]))]], m) for k in range(1, len(steps))]
        labels.append(float(final_ok >= 1.0))
        out.append({"prompt": rows[i]["prompt"], "answer": rows[i]["answer"], "completion": text, "steps": steps,
                    "labels": labels, "correct": final_ok >= 1.0})
    n_steps = sum(len(r["labels"]) for r in out)
    stats = LabelStats(prompts=len(rows), solutions=len(out), solutions_correct=sum(r["correct"] for r in out),
                       steps=n_steps, rollout_prefixes=len(prefixes), rollouts=len(prefixes) * m, tokens=tokens,
                       mean_label=sum(sum(r["labels"]) for r in out) / n_steps if n_steps else 0.0,
                       seconds=time.perf_counter() - start)
    return out, stats


def _params(cfg, n: int, seed: int) -> SamplingParams:
    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                          seed=seed)


def _verifier(name: str) -> Callable[[list[str], list], list[float]]:
    fn = get_reward(name)

    def verify(texts: list[str], answers: list) -> list[float]:
        if not texts:
            return []
        try:
            return fn(texts, answer=answers)
        except Exception as e:
            raise ValueError(f"verifier {name!r} failed while labelling steps: {e}") from e

    return verify


def _check_rows(rows: list[dict]) -> None:
    if not rows:
        raise ValueError("label_steps: rows is empty (no prompts to sample from)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"rows[{i}]: expected columns 'prompt' and 'answer', got {got}")
