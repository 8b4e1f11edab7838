"""Batched calls to the injected models, each checked and charged to the problem that asked.

A strategy keeps one `Compute` per problem (a list, the ledger); every call below takes the
owner (problem index) of each request and adds what the request cost to that owner's entry,
so per-problem compute sums exactly to what the models were asked to do.
"""
from __future__ import annotations

import math

from .base import Candidate, Compute, Query, Toolkit


def _check_lists(what: str, got, want: int) -> None:
    if len(got) != want:
        raise ValueError(f"{what}: returned {len(got)} results for {want} requests")


def _charge_policy(ledger: list[Compute], owners, groups) -> None:
    for owner, cands in zip(owners, groups):
        ledger[owner] = ledger[owner] + Compute(sum(c.num_tokens for c in cands), len(cands), 0)


def sample(tools: Toolkit, prefixes: list[str], owners: list[int], ledger: list[Compute], n: int, *,
           max_new_tokens: int, temperature: float, stop: tuple[str, ...] = (), seed: int = 0) -> list[list[Candidate]]:
    """`n` continuations of each prefix (one batched `generate` call); empty input costs nothing."""
    if not prefixes:
        return []
    out = tools.generate(list(prefixes), n, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                         seed=seed)
    _check_lists("generate", out, len(prefixes))
    for i, cands in enumerate(out):
        if len(cands) != n:
            raise ValueError(f"generate: returned {len(cands)} candidates for prefix {i}, asked for {n}")
    _charge_policy(ledger, owners, out)
    return out


def draw(queries: list[Query], tools: Toolkit, n: int, ledger: list[Compute], tag: str) -> list[list[Candidate]]:
    """n complete samples per query: its `given` samples first, then fresh ones (only those are charged)."""
    missing = [max(0, n - len(q.given)) for q in queries]
    fresh: dict[int, list[Candidate]] = {}
    for k in sorted(set(missing) - {0}):  # one call per distinct shortfall (usually one)
        idx = [i for i, m in enumerate(missing) if m == k]
        got = sample(tools, [queries[i].head for i in idx], idx, ledger, k, max_new_tokens=tools.cfg.max_new_tokens,
                     temperature=tools.cfg.temperature, seed=tools.seed(tag, "draw", k))
        fresh.update(zip(idx, got))
    return [list(q.given[:n]) + fresh.get(i, []) for i, q in enumerate(queries)]


def policy_call(fn, what: str, owners: list[int], ledger: list[Compute], *args, seed: int) -> list[Candidate]:
    """One batched critique / revise / merge call, charged like generation."""
    if not owners:
        return []
    out = fn(*args, seed=seed)
    _check_lists(what, out, len(owners))
    _charge_policy(ledger, owners, [[c] for c in out])
    return out


def _charge_verifier(ledger: list[Compute], owners) -> None:
    for owner in owners:
        ledger[owner] = ledger[owner] + Compute(0, 0, 1)


def score(tools: Toolkit, strategy: str, prompts: list[str], completions: list[str], owners: list[int],
          ledger: list[Compute]) -> list[float]:
    """Outcome-verifier scores of (prompt, completion) pairs; one verifier call each."""
    if not completions:
        return []
    out = [float(s) for s in tools.need("score", strategy)(list(prompts), list(completions))]
    _check_lists("score", out, len(completions))
    if not all(math.isfinite(s) for s in out):
        raise ValueError(f"score: returned a non-finite score {out}")
    _charge_verifier(ledger, owners)
    return out


def score_steps(tools: Toolkit, strategy: str, prompts: list[str], partials: list[list[str]], owners: list[int],
                ledger: list[Compute]) -> list[list[float]]:
    """Process-verifier scores, one per step of each partial solution; one verifier call per partial."""
    if not partials:
        return []
    out = tools.need("score_steps", strategy)(list(prompts), [list(p) for p in partials])
    _check_lists("score_steps", out, len(partials))
    for i, (scores, steps) in enumerate(zip(out, partials)):
        if len(scores) != len(steps):
            raise ValueError(f"score_steps: partial {i} has {len(steps)} steps but got {len(scores)} scores")
    _charge_verifier(ledger, owners)
    return [[float(s) for s in scores] for scores in out]
