"""Self-refine: generate, critique, revise, until the critique approves or nothing changes.

Madaan et al. 2023 ("Self-Refine: Iterative Refinement with Self-Feedback", Algorithm 1): the
same model writes an answer y0, feedback fb_t on y_t, and a refinement y_{t+1} from
(x, y_t, fb_t); it stops when the feedback says so or after a fixed number of rounds.
Snell et al. 2024 call this sequential revision (their revision model is fine-tuned; here
the policy is prompted, see `policy.PolicyFeedback`).

Stopping rule, checked in this order each round:
  approved   the feedback contains `approve` (case-insensitive): keep y_t, stop;
  unchanged  the revision reaches the same answer as y_t (and `stop_on_same_answer`): keep
             the revision, stop, since another round would see the same answer again;
  budget     `budget` rounds (critique + revision each) are spent.
y0 is the problem's first `given` sample if it has one (already paid for), else a greedy chain.
"""
from __future__ import annotations

from components.rewards import extract_answer

from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .calls import policy_call, sample


def self_refine(queries: list[Query], tools: Toolkit, budget: int, *, approve: str = "VERDICT: correct",
                stop_on_same_answer: bool = True) -> list[SearchResult]:
    """`budget` = most critique/revise rounds per problem."""
    check_budget("self_refine", budget)
    critique, revise = tools.need("critique", "self_refine"), tools.need("revise", "self_refine")
    if not approve:
        raise ValueError("self_refine: approve must be a non-empty marker")
    ledger = [Compute()] * len(queries)
    texts = _initial(queries, tools, ledger)
    history = [[extract_answer(t)] for t in texts]
    why = ["budget"] * len(queries)
    active = list(range(len(queries)))
    for r in range(budget):
        if not active:
            break
        prompts = [queries[i].prompt for i in active]
        fb = policy_call(critique, "critique", active, ledger, prompts, [texts[i] for i in active],
                         seed=tools.seed("refine-critique", r))
        todo = [(i, f.text) for i, f in zip(active, fb) if approve.lower() not in f.text.lower()]
        for i in set(active) - {i for i, _ in todo}:
            why[i] = "approved"
        owners = [i for i, _ in todo]
        new = policy_call(revise, "revise", owners, ledger, [queries[i].prompt for i in owners],
                          [texts[i] for i in owners], [f for _, f in todo], seed=tools.seed("refine-revise", r))
        active = []
        for i, cand in zip(owners, new):
            texts[i] = cand.text
            history[i].append(extract_answer(cand.text))
            if stop_on_same_answer and history[i][-1] is not None and history[i][-1] == history[i][-2]:
                why[i] = "unchanged"
            else:
                active.append(i)
    return [SearchResult(h[-1], t, ledger[i], {"rounds": len(h) - 1, "stopped": w, "answers": h})
            for i, (t, h, w) in enumerate(zip(texts, history, why))]


def _initial(queries, tools, ledger) -> list[str]:
    texts = [q.given[0].text if q.given else None for q in queries]
    need = [i for i, t in enumerate(texts) if t is None]
    got = sample(tools, [queries[i].head for i in need], need, ledger, 1, max_new_tokens=tools.cfg.max_new_tokens,
                 temperature=0.0, seed=tools.seed("refine-initial"))
    for i, (cand,) in zip(need, got):
        texts[i] = cand.text
    return texts
