"""Greedy decoding and chain-of-thought prompting: one chain per problem, no search.

Chain-of-thought prompting (Wei et al. 2022; zero-shot: Kojima et al. 2022) makes the model
write its reasoning before the answer. For a chat model trained in the R1 format the
reasoning block IS the chain of thought, so `cot` prefills the assistant turn with the
opening of that block (``<think>`` by default): the model cannot skip to the answer. The
prefill is part of the completion that is scored; it is not counted as generated tokens.
"""
from __future__ import annotations

from components.rewards import extract_answer

from .base import Compute, Query, SearchResult, Toolkit, check_budget
from .calls import sample


def _one_chain(queries: list[Query], tools: Toolkit, prefix: str, tag: str) -> list[SearchResult]:
    ledger = [Compute()] * len(queries)
    chains = sample(tools, [q.head + prefix for q in queries], list(range(len(queries))), ledger, 1,
                    max_new_tokens=tools.cfg.max_new_tokens, temperature=0.0, seed=tools.seed(tag))
    out = []
    for i, (cand,) in enumerate(chains):
        text = prefix + cand.text
        out.append(SearchResult(extract_answer(text), text, ledger[i], {"finish_reason": cand.finish_reason}))
    return out


def greedy(queries: list[Query], tools: Toolkit, budget: int = 1) -> list[SearchResult]:
    """The argmax chain (temperature 0). `budget` must be 1."""
    check_budget("greedy", budget)
    if budget != 1:
        raise ValueError(f"greedy: budget must be 1 (one chain), got {budget}")
    return _one_chain(queries, tools, "", "greedy")


def cot(queries: list[Query], tools: Toolkit, budget: int = 1, *, prefix: str = "<think>") -> list[SearchResult]:
    """Greedy decoding of a reply that starts with `prefix`. `budget` must be 1."""
    check_budget("cot", budget)
    if budget != 1:
        raise ValueError(f"cot: budget must be 1 (one chain), got {budget}")
    if not prefix:
        raise ValueError("cot: prefix must be non-empty (an empty one is `greedy`)")
    return _one_chain(queries, tools, prefix, "cot")
