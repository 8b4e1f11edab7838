"""Tree of thoughts over reasoning steps: breadth-first and depth-first search with a value function.

Yao et al. 2023 ("Tree of Thoughts: Deliberate Problem Solving with Large Language Models",
Sec. 3): a thought is one reasoning step; the thought generator samples `proposals` next
steps of a state; the state evaluator is a learned value function (the PRM / value model,
its step scores aggregated by `agg`), not a prompted self-evaluation.

* BFS (their Algorithm 1): keep the `budget` = b best states of each depth, expand each.
  With a PRM as the evaluator this is step-level beam search; it differs from `beam_search`
  only in budgeting (b states x `proposals` each, rather than N candidates split over beams).
* DFS (their Algorithm 2): expand the most promising state first; children whose value is
  below `threshold` are pruned; when a subtree has no surviving state the search backtracks
  to the next state on the stack. The first finished state that is popped is the answer. The
  budget is the number of expansions per problem.

Departures: both run one state per problem per round, all problems batched; if DFS exhausts
its budget or its stack without reaching a finished state, it answers with the best finished
state it evaluated, or else completes the best state it evaluated greedily (counted).
"""
from __future__ import annotations

from .aggregate import get_aggregation
from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .tree import Node, best, complete, evaluate, expand, keep_best, result, roots


def _check(name: str, tools: Toolkit, budget: int, proposals: int) -> None:
    check_budget(name, budget)
    if proposals < 1:
        raise ValueError(f"{name}: proposals must be >= 1, got {proposals}")
    tools.need("score_steps", name)


def tot_bfs(queries: list[Query], tools: Toolkit, budget: int, *, proposals: int = 2,
            agg: str = "last") -> list[SearchResult]:
    _check("tot_bfs", tools, budget, proposals)
    value = get_aggregation(agg)
    ledger = [Compute()] * len(queries)
    states: list[list[Node]] = [[r] for r in roots(queries)]
    finished: list[list[Node]] = [[] for _ in queries]
    for depth in range(tools.cfg.max_steps):
        frontier = [n for group in states for n in group]
        if not frontier:
            break
        kids = [c for g in expand(frontier, queries, tools, proposals, ledger, ("tot-bfs", depth),
                                  final=depth == tools.cfg.max_steps - 1) for c in g]
        evaluate(kids, queries, tools, value, ledger, "tot_bfs")
        states = keep_best(kids, finished, budget)
    return [result(best(f), ledger, finished=len(f)) for f in finished]


def tot_dfs(queries: list[Query], tools: Toolkit, budget: int, *, proposals: int = 2, threshold: float = 0.5,
            agg: str = "last") -> list[SearchResult]:
    _check("tot_dfs", tools, budget, proposals)
    value = get_aggregation(agg)
    ledger = [Compute()] * len(queries)
    stacks = [[r] for r in roots(queries)]
    solution: list[Node | None] = [None] * len(queries)
    spent = [0] * len(queries)
    seen: list[list[Node]] = [[] for _ in queries]
    pruned = [0] * len(queries)
    rnd = 0
    while True:
        picked = []
        for i, stack in enumerate(stacks):
            while solution[i] is None and stack:
                if stack[-1].done:  # a finished state on top is the answer (costs no expansion)
                    solution[i] = stack.pop()
                elif spent[i] < budget:
                    picked.append(stack.pop())
                    spent[i] += 1
                    break
                else:
                    break
        if not picked:
            break
        deep = [n for n in picked if n.depth + 1 >= tools.cfg.max_steps]  # at the depth limit: complete
        groups = expand([n for n in picked if n not in deep], queries, tools, proposals, ledger, ("tot-dfs", rnd))
        groups += expand(deep, queries, tools, proposals, ledger, ("tot-dfs", rnd, "final"), final=True)
        kids = [c for g in groups for c in g]
        evaluate(kids, queries, tools, value, ledger, "tot_dfs")
        for group in groups:
            for kid in sorted(group, key=lambda n: n.value):  # best ends on top of the stack
                seen[kid.owner].append(kid)
                if kid.value >= threshold:
                    stacks[kid.owner].append(kid)
                else:
                    pruned[kid.owner] += 1
        rnd += 1
    return _answers(queries, tools, ledger, solution, seen, spent, pruned)


def _answers(queries, tools, ledger, solution, seen, spent, pruned) -> list[SearchResult]:
    fallback = {}
    for i, sol in enumerate(solution):
        if sol is None:
            done = [n for n in seen[i] if n.done]
            fallback[i] = best(done) if done else (best(seen[i]) if seen[i] else Node(owner=i))
    todo = [n for n in fallback.values() if not n.done]
    finished = dict(zip(map(id, todo), complete(todo, queries, tools, ledger, ("tot-dfs", "fallback"))))
    out = []
    for i, sol in enumerate(solution):
        node = sol if sol is not None else finished.get(id(fallback[i]), fallback[i])
        out.append(result(node, ledger, expansions=spent[i], pruned=pruned[i], found=sol is not None))
    return out
