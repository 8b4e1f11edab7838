"""Deterministic fake models for the search strategies: every number a test checks is countable by hand.

FakeSteps is a step policy over prompts "p0", "p1", ...: a solution is `depth` steps and then
the answer. Step k of sample j from a prefix is ``f"s{k}{c} "`` where the choice c
(0..choices-1) is a pure function of (seed, prefix, j); the answer step is ``f"</think><answer>{A}</answer>"``
with A the sum of the choices on the path (so the path of all-0 choices answers 0). A
token is one character; a cap shorter than the text truncates it with reason "length".

FakePRM scores a step ``s<k><c> `` by STEP_SCORE[c], the answer step 0.95 if the answer is 0
(the all-0 path) and 0.3 otherwise, so the all-0 path scores highest under every aggregation.
"""
from __future__ import annotations

import hashlib

from components.search import Candidate, Query, SearchConfig, Toolkit

STEP_SCORE = {"0": 0.9, "1": 0.5, "2": 0.1}


def pick(*parts, k: int = 3) -> int:
    return hashlib.sha256(":".join(map(str, parts)).encode()).digest()[0] % k


def queries(n: int) -> list[Query]:
    return [Query(prompt=f"p{i}", head=f"H[p{i}]") for i in range(n)]


class Ledger:
    """What the fakes were asked to do, summed."""

    def __init__(self):
        self.tokens = self.sequences = self.scored = 0
        self.calls: list[dict] = []


class FakeSteps:
    def __init__(self, depth: int = 3, ledger: Ledger | None = None, choices: int = 3):
        self.depth, self.ledger, self.choices = depth, ledger or Ledger(), choices

    def continuation(self, prefix: str, j: int, seed: int, stop) -> str:
        partial = prefix.split("]", 1)[1]
        text, k = "", partial.count(" ")
        while True:
            if k < self.depth:
                step = f"s{k}{pick(seed, prefix, j, k, k=self.choices)} "
            else:
                choices = [int(t[2]) for t in (partial + text).replace("<think>", "").split(" ") if t.startswith("s")]
                return text + f"</think><answer>{sum(choices)}</answer>"
            text += ("<think>" if k == 0 else "") + step
            if stop:
                return text
            k += 1

    def __call__(self, prefixes, n, *, max_new_tokens, temperature, stop=(), seed=0):
        self.ledger.calls.append({"prefixes": list(prefixes), "n": n, "stop": tuple(stop), "cap": max_new_tokens,
                                  "temperature": temperature, "seed": seed})
        out = []
        for p in prefixes:
            row = []
            for j in range(n):
                text = self.continuation(p, 0 if temperature == 0 else j, seed, stop)
                reason = "stop" if text.endswith(" ") else "eos"
                if len(text) > max_new_tokens:
                    text, reason = text[:max_new_tokens], "length"
                row.append(Candidate(text, len(text), reason))
                self.ledger.tokens += len(text)
                self.ledger.sequences += 1
            out.append(row)
        return out


class FakePRM:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __call__(self, prompts, partials):
        self.ledger.scored += len(partials)
        return [[step_score(s) for s in steps] for steps in partials]


def step_score(step: str) -> float:
    s = step.replace("<think>", "")
    if s.startswith("s") and len(s) >= 3:
        return STEP_SCORE[s[2]]
    return 0.95 if "<answer>0</answer>" in s else 0.3


class FakeChains:
    """Complete solutions drawn from a per-prompt script: sample j of prompt p is script[p][j % len]."""

    def __init__(self, script: dict[str, list[str]], ledger: Ledger | None = None):
        self.script, self.ledger = script, ledger or Ledger()

    def __call__(self, prefixes, n, *, max_new_tokens, temperature, stop=(), seed=0):
        self.ledger.calls.append({"prefixes": list(prefixes), "n": n, "seed": seed, "temperature": temperature})
        out = []
        for p in prefixes:
            texts = self.script[p.split("[", 1)[1].split("]", 1)[0]]
            offset = 0 if temperature == 0 else pick(seed, p, k=len(texts))
            row = [Candidate(texts[(offset + j) % len(texts)], len(texts[(offset + j) % len(texts)]), "eos")
                   for j in range(n)]
            self.ledger.tokens += sum(c.num_tokens for c in row)
            self.ledger.sequences += n
            out.append(row)
        return out


class FakeORM:
    """Score = the table's value for a completion (0 if absent)."""

    def __init__(self, table: dict[str, float], ledger: Ledger):
        self.table, self.ledger = table, ledger

    def __call__(self, prompts, completions):
        self.ledger.scored += len(completions)
        return [self.table.get(c, 0.0) for c in completions]


def tools(generate, **kw) -> Toolkit:
    cfg = SearchConfig(**{k: kw.pop(k) for k in list(kw) if k in SearchConfig.model_fields})
    return Toolkit(generate=generate, cfg=cfg, **kw)


def answer(value) -> str:
    return f"<think>x </think><answer>{value}</answer>"


class ScriptedSteps:
    """Next steps looked up by the partial completion: table[partial][j % len] (a step ending in a
    space stops; anything else ends the solution). Without a stop string, steps chain to the end."""

    def __init__(self, table: dict[str, list[str]], ledger: Ledger | None = None):
        self.table, self.ledger = table, ledger or Ledger()

    def __call__(self, prefixes, n, *, max_new_tokens, temperature, stop=(), seed=0):
        self.ledger.calls.append({"prefixes": list(prefixes), "n": n, "stop": tuple(stop), "temperature": temperature})
        out = []
        for p in prefixes:
            partial, row = p.split("]", 1)[1], []
            for j in range(n):
                text = ""
                while True:
                    options = self.table[partial + text]
                    text += options[j % len(options)]
                    if stop or not text.endswith(" "):
                        break
                row.append(Candidate(text, len(text), "stop" if text.endswith(" ") else "eos"))
                self.ledger.tokens += len(text)
                self.ledger.sequences += 1
            out.append(row)
        return out


class TablePRM:
    """Each step's score looked up in a table by its text."""

    def __init__(self, table: dict[str, float], ledger: Ledger):
        self.table, self.ledger = table, ledger

    def __call__(self, prompts, partials):
        self.ledger.scored += len(partials)
        return [[self.table[s] for s in steps] for steps in partials]
