"""Beam search over reasoning steps guided by a process reward model, with optional lookahead.

Snell et al. 2024 ("Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters", Sec. 5.1): sample N first steps, score them with the PRM, keep the
best N/M, expand each of them M times, and repeat until the solutions finish. Here the budget
is N (candidates per round) and `width` the beams kept (N/M), so each beam expands N // width.

Lookahead search (same section): a candidate step is scored by the PRM at the end of a greedy
rollout of `lookahead` more steps; the rollout is discarded (its tokens are counted).

Departures: each round the best `width - finished` candidates of a problem go on, and those
that finished leave the beam (so later rounds keep fewer beams, as in search-and-learn): a
problem ends with at most `width` solutions. In the last of `max_steps` rounds the beams are
completed instead of stepped. The answer is the finished solution with the best aggregated
score (ties: the earliest).
"""
from __future__ import annotations

from .aggregate import get_aggregation
from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .tree import Node, best, evaluate, expand, keep_best, result, roots


def beam_search(queries: list[Query], tools: Toolkit, budget: int, *, width: int = 4, agg: str = "last",
                lookahead: int = 0) -> list[SearchResult]:
    check_budget("beam_search", budget)
    if width < 1 or lookahead < 0:
        raise ValueError(f"beam_search: width must be >= 1 and lookahead >= 0, got {width}, {lookahead}")
    tools.need("score_steps", "beam_search")
    width = min(width, budget)
    value = get_aggregation(agg)
    ledger = [Compute()] * len(queries)
    beams: list[list[Node]] = [[r] for r in roots(queries)]
    finished: list[list[Node]] = [[] for _ in queries]
    rounds = 0
    for rnd in range(tools.cfg.max_steps):
        frontier = [n for group in beams for n in group]
        if not frontier:
            break
        rounds += 1
        k = budget if rnd == 0 else budget // width
        kids = [c for group in expand(frontier, queries, tools, k, ledger, ("beam", rnd),
                                      final=rnd == tools.cfg.max_steps - 1) for c in group]
        _score(kids, queries, tools, value, ledger, lookahead, rnd)
        beams = keep_best(kids, finished, width)
    # the last round completes every beam, so each problem ends with 1..width finished solutions
    return [result(best(f), ledger, rounds=rounds, finished=len(f)) for f in finished]


def _score(kids: list[Node], queries, tools, value, ledger, lookahead: int, rnd: int) -> None:
    """Evaluate each new step; with lookahead, at the tip of a greedy rollout of `lookahead` steps."""
    tips = [Node(owner=k.owner, text=k.text, tokens=k.tokens, done=k.done) for k in kids]
    for j in range(lookahead):
        open_ = [i for i, t in enumerate(tips) if not t.done]
        if not open_:
            break
        nxt = expand([tips[i] for i in open_], queries, tools, 1, ledger, ("beam-lookahead", rnd, j), temperature=0.0)
        for i, group in zip(open_, nxt):
            tips[i] = group[0]
    evaluate(tips, queries, tools, value, ledger, "beam_search")
    for kid, tip in zip(kids, tips):
        kid.value = tip.value
