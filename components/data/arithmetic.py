"""The default verifiable task: integer arithmetic with precedence, solved step by step.

A problem is a flat expression such as ``7+3*4-2`` over + - * with the usual precedence.
Its worked solution evaluates one operation per step, every product first and then sums
left to right (``3*4=12 7+12=19 19-2=17``), so each step is a single arithmetic fact that a
tiny model can learn; the difficulty of a problem is set by its level (operand count and
range). Everything here is a pure function of a seeded ``random.Random``.

Held-out split: a problem belongs to the evaluation split iff the hash of its canonical
text (`canonical`: factors and terms sorted) falls in a fixed bucket (`is_heldout`), so no
training set can ever contain an evaluation problem, nor one that differs from it only by
the order of commuting operands, whatever seeds or sizes a recipe uses.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

# level -> (min operands, max operands, largest operand). Level 1 is a single fact; the
# later levels chain facts, which is where step-by-step reasoning beats a direct answer.
LEVELS: dict[int, tuple[int, int, int]] = {
    1: (2, 2, 9),
    2: (3, 3, 9),
    3: (4, 4, 9),
    4: (3, 4, 19),
}
OPS = "+-*"
HELDOUT_BUCKETS = 10  # 1 in 10 problems is held out for evaluation


@dataclass(frozen=True)
class Problem:
    expression: str
    answer: int
    steps: tuple[str, ...]
    level: int

    def solution(self) -> str:
        """The worked solution in the reasoning format the pipeline trains for."""
        return f"<think>{' '.join(self.steps)}</think><answer>{self.answer}</answer>"


def _apply(a: int, op: str, b: int) -> int:
    return a * b if op == "*" else a + b if op == "+" else a - b


def solve(numbers: list[int], ops: list[str]) -> tuple[int, tuple[str, ...]]:
    """Evaluate with precedence, recording one ``a op b=c`` step per operation."""
    nums, rest_ops, steps = list(numbers), list(ops), []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(rest_ops):
            if rest_ops[i] in wanted:
                value = _apply(nums[i], rest_ops[i], nums[i + 1])
                steps.append(f"{nums[i]}{rest_ops[i]}{nums[i + 1]}={value}")
                nums[i : i + 2] = [value]
                del rest_ops[i]
            else:
                i += 1
    return nums[0], tuple(steps)


def render(numbers: list[int], ops: list[str]) -> str:
    return "".join(f"{n}{op}" for n, op in zip(numbers, ops)) + str(numbers[-1])


_EXPRESSION = re.compile(r"\d+(?:[+\-*]\d+)*")


def parse(expression: str) -> tuple[list[int], list[str]] | None:
    """(numbers, ops) of a flat expression such as ``7+3*4`` (the inverse of `render`); None if it is not one."""
    text = expression.strip()
    if not _EXPRESSION.fullmatch(text):
        return None
    return [int(n) for n in re.findall(r"\d+", text)], re.findall(r"[+\-*]", text)


def canonical(expression: str) -> str:
    """One text for every reordering of a problem that keeps its value by commutativity.

    The expression is a sum of signed product terms; the factors of each term and then the
    terms are sorted, so ``3*9+8``, ``8+9*3`` and ``8+3*9`` are all ``+3*9+8``, and
    ``7-3+2`` is ``+2+7-3``. Text that is not a flat expression is returned stripped.
    """
    parsed = parse(expression)
    if parsed is None:
        return expression.strip()
    numbers, ops = parsed
    terms, factors, sign = [], [numbers[0]], "+"
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            factors.append(n)
            continue
        terms.append((sign, tuple(sorted(factors))))
        factors, sign = [n], op
    terms.append((sign, tuple(sorted(factors))))
    return "".join(s + "*".join(map(str, f)) for s, f in sorted(terms))


def is_heldout(expression: str) -> bool:
    """Whether a problem is in the evaluation split: decided on its `canonical` text, so a
    commuted copy of an evaluation problem (``9*3+8`` for ``3*9+8``) is never trained on."""
    digest = hashlib.sha256(canonical(expression).encode()).digest()
    return digest[0] % HELDOUT_BUCKETS == 0


def sample_problem(rng: random.Random, level: int) -> Problem:
    lo, hi, top = LEVELS[level]
    n = rng.randint(lo, hi)
    numbers = [rng.randint(0, top) for _ in range(n)]
    ops = [rng.choice(OPS) for _ in range(n - 1)]
    answer, steps = solve(numbers, ops)
    return Problem(render(numbers, ops), answer, steps, level)


def level_draws(levels: list[int], weights: dict[int, int]) -> list[int]:
    """The levels a draw picks from uniformly: each level repeated its weight's times (unnamed: once)."""
    if any(lv not in levels for lv in weights) or any(w < 1 for w in weights.values()):
        raise ValueError(f"weights {weights}: each key must be one of the levels {levels} and each weight >= 1")
    return [lv for lv in levels for _ in range(weights.get(lv, 1))]


def generate(seed: int, n: int, levels: list[int], heldout: bool, distinct: bool = True,
             weights: dict[int, int] | None = None) -> list[Problem]:
    """`n` problems over `levels`, all in or all out of the held-out split.

    Each draw picks a level uniformly, or in proportion to its integer weight in `weights`
    (a level not named there weighs 1): ``{4: 3}`` over levels 1-4 makes half the problems level 4.
    """
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"levels: unknown level(s) {unknown or levels}; choose from {sorted(LEVELS)}")
    draws = level_draws(levels, weights or {})
    rng, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"cannot draw {n} distinct problems from levels {levels}; lower the count")
        problem = sample_problem(rng, rng.choice(draws))  # a full level just yields to the others
        if (distinct and problem.expression in seen) or is_heldout(problem.expression) != heldout:
            continue
        seen.add(problem.expression)
        out.append(problem)
    return out
