"""The strategies by name: ``STRATEGIES[name](queries, tools, budget, **options) -> list[SearchResult]``.

What `budget` means for each:
  greedy, cot                      1 (one chain)
  self_consistency, best_of_n,
  weighted_best_of_n               N sampled chains per problem
  beam_search                      N candidate steps per round (kept beams: `width`)
  mcts                             simulations per problem
  tot_bfs, graph_of_thoughts       states kept per depth (breadth)
  tot_dfs                          node expansions per problem
  self_refine                      most critique + revision rounds
  compute_optimal                  a budget level of its fitted `plan` (policy calls per problem)

A query's `given` samples (already paid for) are reused by self_consistency, best_of_n and
weighted_best_of_n (as their first samples) and by self_refine (its first one is y0); the
other strategies ignore them.
"""
from __future__ import annotations

from typing import Callable

from .beam_search import beam_search
from .best_of_n import best_of_n, weighted_best_of_n
from .compute_optimal import compute_optimal
from .graph_of_thoughts import graph_of_thoughts
from .greedy import cot, greedy
from .mcts import mcts
from .self_consistency import self_consistency
from .self_refine import self_refine
from .tree_of_thoughts import tot_bfs, tot_dfs

Strategy = Callable[..., list]

STRATEGIES: dict[str, Strategy] = {
    "greedy": greedy,
    "cot": cot,
    "self_consistency": self_consistency,
    "best_of_n": best_of_n,
    "weighted_best_of_n": weighted_best_of_n,
    "beam_search": beam_search,
    "mcts": mcts,
    "tot_bfs": tot_bfs,
    "tot_dfs": tot_dfs,
    "graph_of_thoughts": graph_of_thoughts,
    "self_refine": self_refine,
    "compute_optimal": compute_optimal,
}


_OUTCOME, _PROCESS = "score", "score_steps"
_VERIFIERS: dict[str, tuple[str, ...]] = {
    "best_of_n": (_OUTCOME,), "weighted_best_of_n": (_OUTCOME,), "beam_search": (_PROCESS,),
    "tot_bfs": (_PROCESS,), "tot_dfs": (_PROCESS,), "graph_of_thoughts": (_PROCESS,),
}


def verifiers_needed(strategy: str, options: dict) -> set[str]:
    """The verifier callables a cell calls: "score" (an outcome verifier, or the PRM aggregated over
    steps) and/or "score_steps" (the PRM). What each strategy asks its Toolkit for at its start, known
    before any model loads (compute_optimal's arms are fitted at run time: not listed)."""
    if strategy == "mcts":
        return {_PROCESS if options.get("evaluation", "prm") == "prm" else _OUTCOME}
    return set(_VERIFIERS.get(strategy, ()))


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown search strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
