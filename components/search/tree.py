"""Search-tree nodes over reasoning steps and the batched operations every tree search shares.

A node is a partial completion (the concatenation of the steps on its path). Expanding a set
of nodes is ONE `generate` call over all of them (across problems), continuing each node's
prefix ``head + text`` up to the next step separator; the policy adapter's prefix cache then
recomputes only the tokens a node added since its parent was generated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from components.data.steps import split_steps
from components.rewards import extract_answer

from .base import Candidate, Compute, Query, SearchResult, Toolkit
from .calls import sample, score_steps


@dataclass(eq=False)
class Node:
    owner: int                      # index of the query this node belongs to
    text: str = ""                  # partial completion: the steps on the path from the root
    tokens: int = 0                 # tokens generated along the path
    done: bool = False              # the solution ended (EOS, the token budget, or a final completion)
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    value: float = 0.0              # the verifier's evaluation of this node
    visits: int = 0                 # MCTS statistics
    value_sum: float = 0.0
    depth: int = 0
    rollout: str = ""               # a complete solution through this node, if a rollout made one

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


def roots(queries: list[Query]) -> list[Node]:
    return [Node(owner=i) for i in range(len(queries))]


def _child(node: Node, cand: Candidate, tools: Toolkit, final: bool) -> Node:
    tokens = node.tokens + cand.num_tokens
    done = final or cand.finish_reason == "eos" or tokens >= tools.cfg.max_new_tokens
    return Node(owner=node.owner, text=node.text + cand.text, tokens=tokens, done=done, parent=node,
                depth=node.depth + 1)


def expand(nodes: list[Node], queries: list[Query], tools: Toolkit, k: int, ledger: list[Compute], tag: tuple, *,
           temperature: float | None = None, final: bool = False) -> list[list[Node]]:
    """`k` children per node, attached to it: its next step, or (final=True) the rest of the solution.

    Steps are capped at `step_tokens` and paths at `max_new_tokens`; one call per distinct cap.
    """
    cfg = tools.cfg
    if any(n.done for n in nodes):
        raise ValueError("expand: a finished node cannot be expanded")
    left = [cfg.max_new_tokens - n.tokens for n in nodes]
    caps = left if final else [min(cfg.step_tokens, x) for x in left]
    temp = cfg.temperature if temperature is None else temperature
    out: list[list[Node]] = [[] for _ in nodes]
    for cap in sorted(set(caps)):
        idx = [i for i, c in enumerate(caps) if c == cap]
        got = sample(tools, [queries[nodes[i].owner].head + nodes[i].text for i in idx], [nodes[i].owner for i in idx],
                     ledger, k, max_new_tokens=cap, temperature=temp, stop=() if final else (cfg.step_sep,),
                     seed=tools.seed(*tag, cap))
        for i, cands in zip(idx, got):
            out[i] = [_child(nodes[i], c, tools, final) for c in cands]
            nodes[i].children.extend(out[i])
    return out


def evaluate(nodes: list[Node], queries: list[Query], tools: Toolkit, agg, ledger: list[Compute], strategy: str) -> None:
    """Set `node.value` = agg(PRM step scores of its steps), one batched verifier call."""
    nodes = [n for n in nodes if n.text]
    partials = [split_steps(n.text, tools.cfg.step_sep) for n in nodes]
    scores = score_steps(tools, strategy, [queries[n.owner].prompt for n in nodes], partials, [n.owner for n in nodes],
                         ledger)
    for node, s in zip(nodes, scores):
        node.value = agg(s)


def complete(nodes: list[Node], queries: list[Query], tools: Toolkit, ledger: list[Compute], tag: tuple) -> list[Node]:
    """Each node, finished by one greedy completion if it is not done yet (the tree is left as it was)."""
    open_ = [n for n in nodes if not n.done]
    copies = [Node(owner=n.owner, text=n.text, tokens=n.tokens, depth=n.depth) for n in open_]
    ends = [group[0] for group in expand(copies, queries, tools, 1, ledger, tag, temperature=0.0, final=True)]
    finished = dict(zip(map(id, open_), ends))
    return [finished.get(id(n), n) for n in nodes]


def keep_best(kids: list[Node], finished: list[list[Node]], width: int) -> list[list[Node]]:
    """Per problem, the best `width - len(finished)` new nodes go on: finished ones join `finished`
    (in place), the others are returned as the next states. Stable: ties keep sampling order."""
    groups: list[list[Node]] = [[] for _ in finished]
    for kid in kids:
        groups[kid.owner].append(kid)
    states: list[list[Node]] = [[] for _ in finished]
    for i, group in enumerate(groups):
        for kid in sorted(group, key=lambda n: -n.value)[: max(0, width - len(finished[i]))]:
            (finished[i] if kid.done else states[i]).append(kid)
    return states


def best(nodes: list[Node]) -> Node:
    """Highest value; ties go to the earliest node (max keeps the first maximum)."""
    return max(nodes, key=lambda n: n.value)


def result(node: Node, ledger: list[Compute], **extras) -> SearchResult:
    return SearchResult(extract_answer(node.text), node.text, ledger[node.owner], extras)
