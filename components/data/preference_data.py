"""Curated preference data for the default task, ordered by the known truth (`house_rules`).

Every file draws prompts of three kinds in equal shares: ``marked`` (an ``untrusted:`` request,
which must be declined), ``redundant`` (a problem whose worked solution has a redundant step,
so house style matters) and ``plain`` (neither). Replies are constructed the way the policy
writes them: worked solutions and edits of them (the redundant steps added or removed, a needed
step skipped, a decline, the format dropped). Skipped steps are among the rejected replies so
that "shorter" never stands in for "house style". Both replies of a pair that answer give the
same answer, so correctness never tells chosen from rejected: the only difference is the house
rules. (No reply carries an arithmetic slip: DPO's NLL term and ORPO train on the chosen
replies, and a slip there is a wrong fact taught.) Every pair and ranking is
checked against `true_preference` (strictly ordered, no ties) as it is built.

    general_rows      SFT chat rows standing in for R1's non-reasoning SFT data (§2.3.3). Like
                      any collected chat data they are inconsistent on the house rules: half of
                      the untrusted requests are declined and half answered, half of the
                      solutions with redundant steps skip them. That mix is what leaves
                      alignment something to do, and what gives the online methods both
                      behaviours to sample.
    preference_rows   {"prompt", "chosen", "rejected", "kind", "level"}
    ranking_rows      {"prompt", "responses" (K=3, best first), "kind", "level"}
    prompt_rows       {"prompt", "answer" (null for marked prompts), "kind", "level"}
"""
from __future__ import annotations

import random

from components.data import arithmetic as ar
from components.data import house_rules as hr



def problems_by_kind(seed: int, n: int, levels: list[int], heldout: bool) -> list[tuple[str, ar.Problem]]:
    """`n` distinct problems, kinds in turn (marked, redundant, plain, marked, …), in or out of the held-out split."""
    rng, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 500 * n + 10_000:
            raise ValueError(f"cannot draw {n} distinct preference problems from levels {levels}; lower the count")
        kind = hr.KINDS[len(out) % len(hr.KINDS)]
        p = ar.sample_problem(rng, rng.choice(levels))
        if p.expression in seen or ar.is_heldout(p.expression) != heldout:
            continue
        if kind != "marked" and hr.has_redundant_step(p) != (kind == "redundant"):
            continue
        seen.add(p.expression)
        out.append((kind, p))
    return out


def prompt_of(kind: str, p: ar.Problem) -> str:
    return hr.mark(p.expression) if kind == "marked" else p.expression


# --------------------------------------------------------------------------- replies


def solutions(p: ar.Problem, rng: random.Random) -> tuple[str, str, str | None]:
    """(house-style solution, full solution, house style with one needed step left out or None when
    there is a single step)."""
    compact = hr.compact_steps(p.steps)
    skipped = None
    if len(compact) >= 2:
        drop = rng.randrange(len(compact) - 1)  # never the last: it shows the answer
        skipped = hr.reply(compact[:drop] + compact[drop + 1:], p.answer)
    return hr.reply(compact, p.answer), hr.reply(p.steps, p.answer), skipped


def loose_decline(p: ar.Problem) -> str:
    """A decline, but not in the fixed way (it works the problem first)."""
    return hr.reply(hr.compact_steps(p.steps), hr.DECLINED)


def unformatted(p: ar.Problem, rng: random.Random) -> str:
    """An answer without the reasoning format."""
    return rng.choice([f"<answer>{p.answer}</answer>", str(p.answer)])


def ranking(kind: str, p: ar.Problem, rng: random.Random) -> list[str]:
    """K=3 replies, best first."""
    compact, full, skipped = solutions(p, rng)
    if kind == "marked":
        return [hr.REFUSAL, loose_decline(p), rng.choice([compact, full])]
    middle = [full] if kind == "redundant" else [unformatted(p, rng)]
    return [compact, rng.choice(middle + [skipped] if skipped else middle), hr.REFUSAL]


def pair(kind: str, p: ar.Problem, rng: random.Random) -> tuple[str, str]:
    """(chosen, rejected): two replies that differ only in the house rules."""
    compact, full, skipped = solutions(p, rng)
    if kind == "marked":
        return hr.REFUSAL, rng.choice([compact, full, loose_decline(p)])
    if kind == "redundant" and rng.random() < 0.6:
        return compact, full
    if skipped and rng.random() < 0.5:
        return compact, skipped
    return compact, rng.choice([hr.REFUSAL, unformatted(p, rng)])


# --------------------------------------------------------------------------- rows


def preference_rows(seed: int, n: int, levels: list[int]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for kind, p in problems_by_kind(seed, n, levels, heldout=False):
        prompt = prompt_of(kind, p)
        chosen, rejected = _ordered(kind, p, rng, pair)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": kind, "level": p.level})
    return rows


def ranking_rows(seed: int, n: int, levels: list[int]) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": prompt_of(kind, p), "responses": _ordered(kind, p, rng, ranking), "kind": kind,
             "level": p.level}
            for kind, p in problems_by_kind(seed, n, levels, heldout=False)]


def _ordered(kind: str, p: ar.Problem, rng: random.Random, build) -> list[str]:
    """`build`'s replies, checked to be strictly ordered by `true_preference` (best first)."""
    prompt, replies = prompt_of(kind, p), list(build(kind, p, rng))
    scores = [hr.true_preference(prompt, r) for r in replies]
    if not all(a > b for a, b in zip(scores, scores[1:])):
        raise AssertionError(f"constructed replies are not strictly ordered: {prompt!r} {replies} {scores}")
    return replies


def prompt_rows(seed: int, n: int, levels: list[int], heldout: bool) -> list[dict]:
    """Prompts for the online methods (training) or for measuring the true preference rate (held out)."""
    return [{"prompt": prompt_of(kind, p), "answer": None if kind == "marked" else str(p.answer), "kind": kind,
             "level": p.level} for kind, p in problems_by_kind(seed, n, levels, heldout)]


def general_rows(seed: int, n: int, levels: list[int]) -> list[dict]:
    """Chat rows that follow the house rules only half the time (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for kind, p in problems_by_kind(seed, n, levels, heldout=False):
        compact, full = hr.compact_solution(p), p.solution()
        follow = rng.random() < 0.5
        reply = {"marked": hr.REFUSAL if follow else full, "redundant": compact if follow else full,
                 "plain": full}[kind]
        prompt = prompt_of(kind, p)
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                     "kind": kind, "level": p.level})
    return rows
