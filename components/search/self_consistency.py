"""Self-consistency: the majority answer of N sampled chains.

Wang et al. 2023 ("Self-Consistency Improves Chain of Thought Reasoning in Language Models",
Sec. 2): sample diverse reasoning paths, marginalise them out by a plurality vote over the
final answers. Samples with no extractable answer abstain.

Tie-break (deterministic): among answers with the same count, the one sampled first wins
(the rule of `components.algorithms.metrics.majority_vote`); sample order is fixed by the seed. The
completion reported is the first chain that reaches the winning answer. The policy is the
only model used: this is the "policy's own votes" verifier in its plainest form.
"""
from __future__ import annotations

from collections import Counter

from components.rewards import extract_answer

from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .calls import draw


def self_consistency(queries: list[Query], tools: Toolkit, budget: int) -> list[SearchResult]:
    """`budget` = N chains per problem (its `given` samples first)."""
    check_budget("self_consistency", budget)
    ledger = [Compute()] * len(queries)
    chains = draw(queries, tools, budget, ledger, "self_consistency")
    out = []
    for i, cands in enumerate(chains):
        answers = [extract_answer(c.text) for c in cands]
        votes = dict(Counter(a for a in answers if a is not None))  # first-seen order
        winner = max(votes, key=votes.get) if votes else None  # max keeps the first of equal counts
        pick = answers.index(winner) if winner is not None else 0
        out.append(SearchResult(winner, cands[pick].text, ledger[i], {"votes": votes}))
    return out
