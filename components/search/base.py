"""Shared types of test-time search: compute, candidates, queries, results, the injected callables.

Every strategy is a function ``strategy(queries, tools, budget, **options) -> list[SearchResult]``
over a whole batch of problems, so each round of a search is ONE batched call to the policy
(and one to the verifier) across all problems. The models enter only through the callables
of a `Toolkit`, so every strategy runs on fakes in tests:

* ``generate(prefixes, n, *, max_new_tokens, temperature, stop, seed) -> list[list[Candidate]]``:
  n continuations of each prefix (the chat-rendered prompt plus a partial completion), one
  list per prefix; step-level search passes ``stop=(step_sep,)``.
* ``score(prompts, completions) -> list[float]``: outcome verifier (ORM), one real score per
  (prompt, completion) pair, higher is better (a logit; strategies that need a probability use
  its sigmoid).
* ``score_steps(prompts, partials) -> list[list[float]]``: process verifier (PRM or value
  model), one score in [0, 1] per step of each partial solution (a list of steps as
  `components.data.steps.split_steps` cuts them).
* ``critique(prompts, completions, *, seed) -> list[Candidate]`` and
  ``revise(prompts, completions, feedbacks, *, seed) -> list[Candidate]`` (self-refine), and
  ``merge(prompts, groups, *, seed) -> list[Candidate]`` (graph of thoughts).

The verifiers take flat lists (one entry per pair, prompts repeated) so a strategy scores all
problems at once. A test-time verifier is a learned model or the policy's own votes, never
the ground-truth checker, which only scores the final answer outside search.

Compute is counted per problem, exactly, independent of batching:
  generated_tokens  tokens sampled by the policy (every candidate, kept or not);
  forward_passes    policy generations: one per sampled sequence (a chain, a step, a rollout,
                    a critique, a revision, a merge);
  verifier_calls    sequences the verifier scored (one per completion or partial solution).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from pydantic import Field

from components.config import Section


@dataclass(frozen=True)
class Compute:
    generated_tokens: int = 0
    forward_passes: int = 0
    verifier_calls: int = 0

    def __add__(self, other: "Compute") -> "Compute":
        return Compute(self.generated_tokens + other.generated_tokens, self.forward_passes + other.forward_passes,
                       self.verifier_calls + other.verifier_calls)


def total(computes) -> Compute:
    out = Compute()
    for c in computes:
        out = out + c
    return out


@dataclass(frozen=True)
class Candidate:
    text: str                 # the continuation (stop string kept, EOS dropped)
    num_tokens: int           # tokens sampled for it
    finish_reason: str        # "eos" | "stop" | "length"
    mean_logprob: float | None = None


@dataclass(frozen=True)
class Query:
    prompt: str               # the problem as verifiers and templates see it
    head: str                 # the chat-rendered prompt the policy continues
    given: tuple[Candidate, ...] = ()  # complete samples already drawn and paid for; sampling strategies reuse them


@dataclass
class SearchResult:
    answer: str | None
    completion: str
    compute: Compute
    extras: dict = field(default_factory=dict)


class Generate(Protocol):
    def __call__(self, prefixes: list[str], n: int, *, max_new_tokens: int, temperature: float,
                 stop: tuple[str, ...] = (), seed: int = 0) -> list[list[Candidate]]: ...


Score = Callable[[list[str], list[str]], list[float]]
ScoreSteps = Callable[[list[str], list[list[str]]], list[list[float]]]


class Critique(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], *, seed: int = 0) -> list[Candidate]: ...


class Revise(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], feedbacks: list[str], *,
                 seed: int = 0) -> list[Candidate]: ...


class Merge(Protocol):
    def __call__(self, prompts: list[str], groups: list[list[str]], *, seed: int = 0) -> list[Candidate]: ...


class SearchConfig(Section):
    max_new_tokens: int = Field(64, ge=1, le=32768, description="Most tokens of one whole completion.")
    step_tokens: int = Field(24, ge=1, le=32768, description="Most tokens of one reasoning step in step-level search.")
    max_steps: int = Field(12, ge=1, le=1000, description="Step rounds before a tree search completes its paths.")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature of parallel and tree search.")
    step_sep: str = Field(" ", min_length=1, description='Step separator: " " for the arithmetic task, "\\n\\n" for real models.')
    seed: int = Field(0, description="Seed of every sampling call (each call derives its own).")


@dataclass(frozen=True)
class Toolkit:
    generate: Generate
    score: Score | None = None
    score_steps: ScoreSteps | None = None
    critique: Critique | None = None
    revise: Revise | None = None
    merge: Merge | None = None
    cfg: SearchConfig = field(default_factory=SearchConfig)

    def need(self, name: str, strategy: str):
        fn = getattr(self, name)
        if fn is None:
            raise ValueError(f"{strategy} needs a `{name}` callable in the Toolkit")
        return fn

    def seed(self, *parts) -> int:
        """A seed that is a pure function of (cfg.seed, *parts): each call of a search draws fresh samples."""
        digest = hashlib.blake2b(":".join(map(str, (self.cfg.seed, *parts))).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def check_budget(strategy: str, budget: int, low: int = 1) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < low:
        raise ValueError(f"{strategy}: budget must be an integer >= {low}, got {budget!r}")
    return budget
