"""Best-of-N with an outcome verifier, and weighted best-of-N.

* best-of-N (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems", Sec. 4):
  sample N solutions, answer with the one the verifier scores highest. Ties: the earliest
  sample.
* weighted best-of-N (Li et al. 2023, "Making Large Language Models Better Reasoners with
  Step-Aware Verifier", Eq. 2; Snell et al. 2024, Sec. 5): every answer collects the verifier
  weights of the samples that reach it, and the answer with the largest total wins:
      a* = argmax_a  sum_i 1[ans_i = a] * w_i,   w_i = sigmoid(score_i)
  (scores are logits; the sigmoid makes every vote positive). Samples without an answer
  abstain. Ties: the answer sampled first. The completion is that answer's best-scored sample.

Both score all N samples, given ones included (N verifier calls per problem).
"""
from __future__ import annotations

from components.rewards import extract_answer

from .base import Candidate, Compute, Query, SearchResult, Toolkit, check_budget, sigmoid
from .calls import draw, score


def _scored(queries, tools, budget, name) -> tuple[list[list[Candidate]], list[list[float]], list[Compute]]:
    check_budget(name, budget)
    tools.need("score", name)
    ledger = [Compute()] * len(queries)
    chains = draw(queries, tools, budget, ledger, name)
    owners = [i for i, cands in enumerate(chains) for _ in cands]
    flat = score(tools, name, [queries[i].prompt for i in owners], [c.text for cands in chains for c in cands],
                 owners, ledger)
    scores, at = [], 0
    for cands in chains:
        scores.append(flat[at: at + len(cands)])
        at += len(cands)
    return chains, scores, ledger


def best_of_n(queries: list[Query], tools: Toolkit, budget: int) -> list[SearchResult]:
    """`budget` = N samples per problem; the top-scored one answers."""
    chains, scores, ledger = _scored(queries, tools, budget, "best_of_n")
    out = []
    for i, (cands, s) in enumerate(zip(chains, scores)):
        top = max(range(len(cands)), key=lambda j: s[j])  # first maximum: earliest sample on ties
        text = cands[top].text
        out.append(SearchResult(extract_answer(text), text, ledger[i], {"score": s[top], "index": top}))
    return out


def weighted_votes(answers: list[str | None], scores: list[float]) -> dict[str, float]:
    """Total sigmoid(score) per answer, in first-seen order (None abstains)."""
    totals: dict[str, float] = {}
    for a, s in zip(answers, scores):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + sigmoid(s)
    return totals


def weighted_best_of_n(queries: list[Query], tools: Toolkit, budget: int) -> list[SearchResult]:
    """`budget` = N samples per problem; the answer with the largest verifier-weighted vote."""
    chains, scores, ledger = _scored(queries, tools, budget, "weighted_best_of_n")
    out = []
    for i, (cands, s) in enumerate(zip(chains, scores)):
        answers = [extract_answer(c.text) for c in cands]
        totals = weighted_votes(answers, s)
        if not totals:
            out.append(SearchResult(None, cands[0].text, ledger[i], {"votes": {}}))
            continue
        winner = max(totals, key=lambda a: totals[a])  # dict order = first seen: earliest answer on ties
        pick = max((j for j, a in enumerate(answers) if a == winner), key=lambda j: s[j])
        out.append(SearchResult(winner, cands[pick].text, ledger[i], {"votes": totals}))
    return out
