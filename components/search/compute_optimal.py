"""Compute-optimal test-time scaling: spend per problem what its estimated difficulty needs.

Snell et al. 2024 ("Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters", Sec. 3.2-3.3): bin problems by difficulty, and per bin pick the
test-time strategy and hyper-parameters that do best at a given generation budget; easy
problems gain most from sequential revision, hard ones from parallel search. Difficulty is
PREDICTED, never the true level:
  agreement   1 - (largest answer count) / probes   over `probes` sampled chains;
  verifier    1 - mean sigmoid(ORM score)           over the same chains.
The probes are paid once and reused: they are the first samples of every parallel arm and
the starting solution of self-refine (ordered majority answer first).

Fitting (`fit_compute_optimal`, on a development split with gold answers): run the probes
and every arm (a strategy with a budget) on the dev problems, cut the difficulty into at most
`n_bins` bins (`bin_edges`), and for each budget level L and bin choose the arm with the best dev
accuracy among arms whose mean policy calls in that bin, probes included, are at most L
(ties, or accuracy within `slack` of the best: fewer dev tokens, then the order of `arms`).
The `compute_optimal` strategy then runs on OTHER problems (it refuses dev prompts): probe,
bin, run the bin's arm at the requested level. Compute = probes + the arm's own.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field, replace

from components.rewards import extract_answer, get_reward

from .base import Candidate, Compute, Query, SearchResult, Toolkit, sigmoid
from .calls import draw, score


def agreement_difficulty(samples: list[Candidate], scores: list[float] | None) -> float:
    """1 - max_a count(a) / n; chains without an answer count in n but vote for nothing."""
    counts = Counter(a for a in (extract_answer(c.text) for c in samples) if a is not None)
    return 1.0 - (max(counts.values()) if counts else 0) / len(samples)


def verifier_difficulty(samples: list[Candidate], scores: list[float] | None) -> float:
    """1 - mean_i sigmoid(score_i)."""
    return 1.0 - sum(sigmoid(s) for s in scores) / len(scores)


DIFFICULTY = {"agreement": agreement_difficulty, "verifier": verifier_difficulty}


@dataclass(frozen=True)
class Arm:
    strategy: str
    budget: int
    options: tuple = ()  # sorted (name, value) pairs passed to the strategy

    @property
    def label(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in self.options)
        return f"{self.strategy}@{self.budget}{opts}"


@dataclass(frozen=True)
class Plan:
    signal: str
    probes: int
    edges: tuple[float, ...]                    # bin b holds difficulties in (edges[b-1], edges[b]]
    choices: dict[int, tuple[Arm, ...]]         # budget level -> the arm of each bin
    dev_prompts: frozenset[str] = frozenset()
    table: list[dict] = field(default_factory=list)  # the dev statistics behind each choice

    def bin(self, difficulty: float) -> int:
        return bisect_left(self.edges, difficulty)


def probe(queries: list[Query], tools: Toolkit, signal: str, probes: int,
          ledger: list[Compute]) -> tuple[list[Query], list[float]]:
    """Sample `probes` chains per query; return the queries carrying them (majority answer first) and difficulties."""
    if signal not in DIFFICULTY:
        raise ValueError(f"unknown difficulty signal {signal!r}; choose one of {sorted(DIFFICULTY)}")
    samples = draw([replace(q, given=()) for q in queries], tools, probes, ledger, "probe")
    scores = [None] * len(queries)
    if signal == "verifier":
        owners = [i for i, s in enumerate(samples) for _ in s]
        flat = score(tools, "compute_optimal", [queries[i].prompt for i in owners],
                     [c.text for s in samples for c in s], owners, ledger)
        scores = [flat[i * probes:(i + 1) * probes] for i in range(len(queries))]
    out, difficulty = [], []
    for q, s, sc in zip(queries, samples, scores):
        difficulty.append(DIFFICULTY[signal](s, sc))
        answers = [extract_answer(c.text) for c in s]
        counts = Counter(a for a in answers if a is not None)
        order = sorted(range(len(s)), key=lambda j: -counts[answers[j]] if answers[j] is not None else 0)
        out.append(replace(q, given=tuple(s[j] for j in order)))
    return out, difficulty


def grade(results: list[SearchResult], golds: list[str], correctness: str = "exact_int") -> list[bool]:
    """Ground-truth correctness of final answers (evaluation only; never a verifier inside search)."""
    return [s > 0.5 for s in get_reward(correctness)([r.completion for r in results], answer=list(golds))]


def bin_edges(values: list[float], n_bins: int) -> tuple[float, ...]:
    """Upper edges of the difficulty bins; bin b holds (edges[b-1], edges[b]], the last bin the rest.

    With at most `n_bins` distinct values (a signal from a few probes is discrete) every value
    gets its own bin; otherwise the edges are the distinct nearest-rank quantiles
    q_k = sorted(values)[ceil(k n / n_bins) - 1], k = 1..n_bins-1, except the largest value
    (an edge there would leave the top bin empty).
    """
    if not values or n_bins < 1:
        raise ValueError(f"bin_edges: need values and n_bins >= 1, got {len(values)} values, {n_bins} bins")
    distinct = sorted(set(values))
    if len(distinct) <= n_bins:
        return tuple(distinct[:-1])
    ranked, n = sorted(values), len(values)
    return tuple(sorted({ranked[-(-k * n // n_bins) - 1] for k in range(1, n_bins)} - {distinct[-1]}))


def fit_plan(difficulty: list[float], outcomes: dict[Arm, list[bool]], costs: dict[Arm, list[Compute]],
             levels: list[int], *, signal: str, probes: int, n_bins: int = 3, slack: float = 0.0,
             dev_prompts=frozenset()) -> Plan:
    """Pure fit from dev statistics: per (level, bin), the arm chosen as the module docstring says.

    difficulty[i], outcomes[arm][i], costs[arm][i]: dev problem i. Levels below `probes`
    cannot be met (the probes alone cost that much) and are left out.
    """
    n = len(difficulty)
    if not n or not outcomes or any(len(v) != n for v in [*outcomes.values(), *costs.values()]):
        raise ValueError(f"fit_plan: need outcomes and costs of every arm for all {n} dev problems")
    edges = bin_edges(difficulty, n_bins)
    plan = Plan(signal, probes, edges, {}, frozenset(dev_prompts))
    members = [[i for i in range(n) if plan.bin(difficulty[i]) == b] for b in range(len(edges) + 1)]
    choices, table = {}, []
    for level in sorted(set(levels)):
        if level < probes:
            continue
        picks = []
        for b, idx in enumerate(members):
            idx = idx or list(range(n))  # a bin no dev problem fell in borrows the whole dev set
            arm, row = _choose(outcomes, costs, idx, level, probes, slack)
            if arm is None:
                break
            picks.append(arm)
            table.append({"level": level, "bin": b, "arm": arm.label, "dev_problems": len(members[b]), **row})
        if len(picks) == len(members):
            choices[level] = tuple(picks)
    if not choices:
        raise ValueError(f"fit_plan: no level in {sorted(levels)} affords the {probes} probes plus an arm")
    return replace(plan, choices=choices, table=table)


def _choose(outcomes, costs, idx, level, probes, slack):
    stats = []
    for arm in outcomes:
        calls = probes + sum(costs[arm][i].forward_passes for i in idx) / len(idx)
        if calls <= level:
            acc = sum(outcomes[arm][i] for i in idx) / len(idx)
            tokens = sum(costs[arm][i].generated_tokens for i in idx) / len(idx)
            stats.append((arm, acc, tokens, calls))
    if not stats:
        return None, {}
    top = max(s[1] for s in stats)
    arm, acc, tokens, calls = min((s for s in stats if s[1] >= top - slack - 1e-12), key=lambda s: s[2])
    return arm, {"dev_accuracy": acc, "dev_tokens": tokens, "dev_policy_calls": calls}


def fit_compute_optimal(dev: list[Query], golds: list[str], tools: Toolkit, arms: list[Arm], levels: list[int], *,
                        signal: str = "agreement", probes: int = 4, n_bins: int = 3, slack: float = 0.0,
                        correctness: str = "exact_int") -> Plan:
    """Probe the dev problems, run every arm on them (reusing the probes), grade, and `fit_plan`."""
    from .registry import get_strategy  # the arms are strategies of the registry

    if not dev or len(golds) != len(dev):
        raise ValueError(f"fit_compute_optimal: need dev queries with one gold answer each, got {len(dev)}/{len(golds)}")
    probed, difficulty = probe(dev, tools, signal, probes, [Compute()] * len(dev))
    outcomes, costs = {}, {}
    for arm in arms:
        results = get_strategy(arm.strategy)(probed, tools, arm.budget, **dict(arm.options))
        outcomes[arm], costs[arm] = grade(results, golds, correctness), [r.compute for r in results]
    return fit_plan(difficulty, outcomes, costs, levels, signal=signal, probes=probes, n_bins=n_bins, slack=slack,
                    dev_prompts=frozenset(q.prompt for q in dev))


def compute_optimal(queries: list[Query], tools: Toolkit, budget: int, *, plan: Plan) -> list[SearchResult]:
    """`budget` = a budget level of `plan`: probe, bin by predicted difficulty, run that bin's arm."""
    from .registry import get_strategy

    if budget not in plan.choices:
        raise ValueError(f"compute_optimal: budget {budget} is not a fitted level; choose one of {sorted(plan.choices)}")
    for i, q in enumerate(queries):
        if q.prompt in plan.dev_prompts:
            raise ValueError(f"compute_optimal: query {i} ({q.prompt!r}) is in the dev split the plan was fitted on")
    ledger = [Compute()] * len(queries)
    probed, difficulty = probe(queries, tools, plan.signal, plan.probes, ledger)
    arm_of = [plan.choices[budget][plan.bin(d)] for d in difficulty]
    out: list[SearchResult | None] = [None] * len(queries)
    for arm in dict.fromkeys(arm_of):  # one batched run per arm, in first-use order
        idx = [i for i, a in enumerate(arm_of) if a == arm]
        results = get_strategy(arm.strategy)([probed[i] for i in idx], tools, arm.budget, **dict(arm.options))
        for i, r in zip(idx, results):
            extras = {**r.extras, "difficulty": difficulty[i], "bin": plan.bin(difficulty[i]), "arm": arm.label}
            out[i] = SearchResult(r.answer, r.completion, ledger[i] + r.compute, extras)
    return out
