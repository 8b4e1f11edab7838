"""Monte Carlo tree search over reasoning steps.

Each simulation (Kocsis & Szepesvari 2006, UCT; the LLM-reasoning form of Hao et al. 2023,
RAP, and Zhang et al. 2024, ReST-MCTS*):
  selection     from the root, follow argmax_c  Q(c) + c_uct * sqrt(ln N(parent) / N(c))
                to a node without children;
  expansion     sample `expand_k` next steps from it (one batched call across problems);
  evaluation    each new child gets a value in [0, 1]: the aggregated PRM / value-model score
                of its steps ("prm"), or sigmoid of the outcome verifier's score of one sampled
                rollout to the end ("rollout");
  backprop      each child starts with N = 1, W = its value; every ancestor adds the children's
                visits and values. A selected finished node is re-evaluated for free (N += 1,
                W += its value, on the path).
The budget is the number of simulations per problem, each with at most one expansion. The
answer follows the most visited child from the root (ties: higher Q, then the earliest) to a
leaf; an unfinished leaf ends with its rollout, or else one greedy completion (counted).

Departures: every child of an expansion is evaluated at once (no progressive widening), and
one simulation runs per problem per round, all problems in one batch.
"""
from __future__ import annotations

import math

from .aggregate import get_aggregation
from .base import Compute, Query, SearchResult, Toolkit, check_budget, sigmoid
from .calls import score
from .tree import Node, complete, evaluate, expand, result, roots


def _eval_prm(nodes, queries, tools, agg, ledger, tag) -> None:
    evaluate(nodes, queries, tools, agg, ledger, "mcts")


def _eval_rollout(nodes, queries, tools, agg, ledger, tag) -> None:
    tips = [Node(owner=n.owner, text=n.text, tokens=n.tokens, done=n.done) for n in nodes]
    open_ = [i for i, t in enumerate(tips) if not t.done]
    for i, group in zip(open_, expand([tips[i] for i in open_], queries, tools, 1, ledger, tag, final=True)):
        tips[i] = group[0]
    scores = score(tools, "mcts", [queries[t.owner].prompt for t in tips], [t.text for t in tips],
                   [t.owner for t in tips], ledger)
    for node, tip, s in zip(nodes, tips, scores):
        node.value, node.rollout = sigmoid(s), tip.text


EVALUATIONS = {"prm": _eval_prm, "rollout": _eval_rollout}


def uct(child: Node, parent_visits: int, c_uct: float) -> float:
    """Q(c) + c_uct * sqrt(ln N(parent) / N(c)); unvisited children first."""
    if child.visits == 0:
        return math.inf
    return child.q + c_uct * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def select(root: Node, c_uct: float) -> Node:
    node = root
    while node.children:
        node = max(node.children, key=lambda c: uct(c, node.visits, c_uct))
    return node


def backprop(node: Node, visits: int, value: float) -> None:
    while node is not None:
        node.visits += visits
        node.value_sum += value
        node = node.parent


def mcts(queries: list[Query], tools: Toolkit, budget: int, *, expand_k: int = 3, c_uct: float = 1.0,
         evaluation: str = "prm", agg: str = "last") -> list[SearchResult]:
    check_budget("mcts", budget)
    if expand_k < 1 or c_uct < 0:
        raise ValueError(f"mcts: expand_k must be >= 1 and c_uct >= 0, got {expand_k}, {c_uct}")
    if evaluation not in EVALUATIONS:
        raise ValueError(f"mcts: unknown evaluation {evaluation!r}; choose one of {sorted(EVALUATIONS)}")
    tools.need("score_steps" if evaluation == "prm" else "score", "mcts")
    value = get_aggregation(agg)
    ledger = [Compute()] * len(queries)
    trees = roots(queries)
    for sim in range(budget):
        leaves = [select(root, c_uct) for root in trees]
        open_ = [leaf for leaf in leaves if not leaf.done]
        for leaf in leaves:
            if leaf.done:
                backprop(leaf, 1, leaf.value)
        groups = expand(open_, queries, tools, expand_k, ledger, ("mcts", sim))
        EVALUATIONS[evaluation]([c for g in groups for c in g], queries, tools, value, ledger, ("mcts-rollout", sim))
        for leaf, group in zip(open_, groups):
            for child in group:
                child.visits, child.value_sum = 1, child.value
            backprop(leaf, len(group), sum(c.value for c in group))
    return _answers(trees, queries, tools, ledger, budget)


def _answers(trees, queries, tools, ledger, budget) -> list[SearchResult]:
    leaves = []
    for root in trees:
        node = root
        while node.children:
            node = max(node.children, key=lambda c: (c.visits, c.q))
        leaves.append(node)
    unfinished = [n for n in leaves if not n.done and not n.rollout]
    completed = dict(zip(map(id, unfinished), complete(unfinished, queries, tools, ledger, ("mcts", "final"))))
    out = []
    for root, leaf in zip(trees, leaves):
        text = leaf.text if leaf.done else (leaf.rollout or completed[id(leaf)].text)
        final = Node(owner=leaf.owner, text=text)
        out.append(result(final, ledger, simulations=budget, tree_size=_size(root), root_visits=root.visits))
    return out


def _size(root: Node) -> int:
    return 1 + sum(_size(c) for c in root.children)
