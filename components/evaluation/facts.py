"""How well a model knows the single arithmetic facts its worked solutions are made of.

The default task's held-out accuracy after reasoning RL is bounded by the facts the base model
learned in pretraining: a policy that follows the right plan still writes a wrong product. This
measures that bound directly, without sampling: each problem's gold worked solution is fed in
the plain pretraining form (``7+3*4: 3*4=12 7+12=19``), and a step counts as known when the
model's argmax predicts every token of its result given the gold text before it (teacher
forcing: the greedy continuation from that prefix would write the right result). A problem
counts as known when all its steps are.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from components.data.arithmetic import Problem
from components.data.curate import plain_text


@dataclass(frozen=True)
class StepFact:
    level: int
    op: str           # + - *
    large: bool       # an operand above 9 in size (a level-4 operand or an intermediate result)
    known: bool


_STEP = re.compile(r"(-?\d+)([+\-*])(\d+)")  # a step's left side: a leading minus is a sign


def step_facts(model, tokenizer, problems: list[Problem]) -> list[list[StepFact]]:
    """For each problem, whether the model predicts each step's result under teacher forcing."""
    import torch

    out = []
    model.eval()
    for p in problems:
        text = plain_text(p)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        with torch.no_grad():
            pred = model(torch.tensor([ids], device=model.device)).logits[0].argmax(-1).tolist()
        facts, pos = [], len(p.expression) + 2
        for step in p.steps:
            lhs, _ = step.split("=", 1)
            start, end = pos + len(lhs) + 1, pos + len(step)
            result = [i for i, (a, b) in enumerate(offsets) if start <= a and b <= end and b > a]
            if not result or result[0] == 0:
                raise ValueError(f"{p.expression}: the result of step {step!r} has no tokens to predict")
            known = all(pred[i - 1] == ids[i] for i in result)
            a, op, b = _STEP.fullmatch(lhs).groups()
            facts.append(StepFact(p.level, op, max(abs(int(a)), int(b)) > 9, known))
            pos += len(step) + 1
        out.append(facts)
    return out


def summarize(facts: list[list[StepFact]]) -> dict[str, float]:
    """Shares of known steps (all, and by op and operand size) and of fully known problems (all, by level)."""
    steps = [f for fs in facts for f in fs]
    groups: dict[str, list[bool]] = defaultdict(list)
    for f in steps:
        groups[f"steps/{f.op}/{'large' if f.large else 'small'}"].append(f.known)
    by_level: dict[str, list[bool]] = defaultdict(list)
    for fs in facts:
        by_level[f"problems/level_{fs[0].level}"].append(all(f.known for f in fs))
    share = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"steps": share([f.known for f in steps]), "problems": share([all(f.known for f in fs) for fs in facts]),
            **{k: share(v) for k, v in sorted(groups.items())}, **{k: share(v) for k, v in sorted(by_level.items())}}
