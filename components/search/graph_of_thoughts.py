"""Graph of thoughts over reasoning steps: tree-of-thoughts BFS plus aggregation and refinement.

Besta et al. 2024 ("Graph of Thoughts: Solving Elaborate Problems with Large Language Models",
Sec. 3-4) let a thought have several parents. The graph of operations here, per round:
  Generate   each of the b = `budget` kept states samples `proposals` next steps;
  Score      the PRM / value model scores every new state (step scores aggregated by `agg`);
  Aggregate  the `merge` best unfinished states of a problem are merged into ONE new thought
             by the policy (`merge` callable: it sees those partial solutions and writes one),
             which is scored and competes with the others;
  KeepBest   the b best unfinished states go on; finished ones are collected.
At the end the best finished solution is refined `refine_rounds` times (critique, then
revise: the `critique` / `revise` callables) and each refinement is kept only if the PRM
scores it higher (Refine + KeepBest).

Departures: an aggregated thought records no parents (only its depth, the deepest source's
plus one) because nothing downstream reads them; refinement acts on the final solution rather
than on intermediate thoughts, which keeps its cost at 2 policy calls per round per problem.
"""
from __future__ import annotations

from .aggregate import get_aggregation
from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .calls import policy_call
from .tree import Node, best, evaluate, expand, keep_best, result, roots


def graph_of_thoughts(queries: list[Query], tools: Toolkit, budget: int, *, proposals: int = 2, merge: int = 2,
                      refine_rounds: int = 1, agg: str = "last") -> list[SearchResult]:
    check_budget("graph_of_thoughts", budget)
    if proposals < 1 or merge < 2 or refine_rounds < 0:
        raise ValueError("graph_of_thoughts: need proposals >= 1, merge >= 2, refine_rounds >= 0, got "
                         f"{proposals}, {merge}, {refine_rounds}")
    for need in ("score_steps", "merge", *(("critique", "revise") if refine_rounds else ())):
        tools.need(need, "graph_of_thoughts")
    value = get_aggregation(agg)
    ledger = [Compute()] * len(queries)
    states: list[list[Node]] = [[r] for r in roots(queries)]
    finished: list[list[Node]] = [[] for _ in queries]
    merged = 0
    for depth in range(tools.cfg.max_steps):
        frontier = [n for group in states for n in group]
        if not frontier:
            break
        last = depth == tools.cfg.max_steps - 1
        kids = [c for g in expand(frontier, queries, tools, proposals, ledger, ("got", depth), final=last) for c in g]
        evaluate(kids, queries, tools, value, ledger, "graph_of_thoughts")
        if not last:
            joined = _aggregate(kids, queries, tools, merge, value, ledger, depth)
            merged += len(joined)
            kids += joined
        states = keep_best(kids, finished, budget)
    answers = [best(f) for f in finished]
    for r in range(refine_rounds):
        answers = _refine(answers, queries, tools, value, ledger, r)
    return [result(node, ledger, merged=merged) for node in answers]


def _aggregate(kids, queries, tools, merge, value, ledger, depth) -> list[Node]:
    """One merged thought per problem from its `merge` best unfinished new states."""
    by_owner: dict[int, list[Node]] = {}
    for kid in kids:
        if not kid.done:
            by_owner.setdefault(kid.owner, []).append(kid)
    groups = [sorted(g, key=lambda n: -n.value)[:merge] for g in by_owner.values() if len(g) >= merge]
    owners = [g[0].owner for g in groups]
    cands = policy_call(tools.merge, "merge", owners, ledger, [queries[o].prompt for o in owners],
                        [[n.text for n in g] for g in groups], seed=tools.seed("got-merge", depth))
    cfg = tools.cfg
    joined = [Node(owner=o, text=c.text, tokens=c.num_tokens, depth=max(n.depth for n in g) + 1,
                   done=c.finish_reason == "eos" or c.num_tokens >= cfg.max_new_tokens)
              for o, g, c in zip(owners, groups, cands)]
    evaluate(joined, queries, tools, value, ledger, "graph_of_thoughts")
    return joined


def _refine(answers, queries, tools, value, ledger, r) -> list[Node]:
    """Critique and revise each answer; keep the revision if the PRM prefers it."""
    owners = [n.owner for n in answers]
    prompts = [queries[o].prompt for o in owners]
    texts = [n.text for n in answers]
    feedback = policy_call(tools.need("critique", "graph_of_thoughts"), "critique", owners, ledger, prompts, texts,
                           seed=tools.seed("got-critique", r))
    revised = policy_call(tools.need("revise", "graph_of_thoughts"), "revise", owners, ledger, prompts, texts,
                          [f.text for f in feedback], seed=tools.seed("got-revise", r))
    nodes = [Node(owner=o, text=c.text, tokens=c.num_tokens, done=True) for o, c in zip(owners, revised)]
    evaluate(nodes, queries, tools, value, ledger, "graph_of_thoughts")
    return [new if new.text and new.value > old.value else old for old, new in zip(answers, nodes)]
