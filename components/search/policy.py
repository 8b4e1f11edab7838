"""The policy as search callables: `generate` over the rollout engine, and prompted critique,
revision and merging (self-refine, graph of thoughts).

`PolicyGenerator` turns one strategy request into one `engine.generate` call (all prefixes x n
samples, batched and seeded per request); step-level search passes the step separator as a
stop string. With a `PrefixCache` (`TransformersEngine` only) the prefill reuses the keys and
values of every prefix the engine computed before, so expanding a tree node costs only the
tokens it added; `prefill_tokens` / `cached_tokens` count what was computed and reused. vLLM
caches prefixes itself (`enable_prefix_caching`), so it takes no `PrefixCache`.

`PolicyFeedback` asks the same policy, in a new chat turn rendered with its own template, to
critique a solution, revise it from feedback, or merge several partial solutions; the prompt
texts are the `FeedbackTemplates` fields.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from components.config import Section
from components.data.prompts import render_prompt
from components.generation import PrefixCache, SamplingParams, TransformersEngine

from .base import Candidate, Query


def make_queries(tokenizer, prompts: list[str], system_prompt: str | None = None) -> list[Query]:
    """Queries for raw problem texts: `head` is the chat-rendered prompt the policy continues."""
    return [Query(prompt=p, head=render_prompt(tokenizer, p, system_prompt)) for p in prompts]


class PolicyGenerator:
    """The `Generate` callable over a rollout engine; see the module docstring."""

    def __init__(self, engine, *, prefix_cache: PrefixCache | None = None, top_p: float = 1.0, top_k: int = 0):
        if prefix_cache is not None and not isinstance(engine, TransformersEngine):
            raise ValueError("prefix_cache: only the in-process TransformersEngine takes one (vLLM caches prefixes itself)")
        self.engine, self.prefix_cache, self.top_p, self.top_k = engine, prefix_cache, top_p, top_k
        self.prefill_tokens = self.cached_tokens = self.generated_tokens = 0

    def __call__(self, prefixes: list[str], n: int, *, max_new_tokens: int, temperature: float,
                 stop: tuple[str, ...] = (), seed: int = 0) -> list[list[Candidate]]:
        params = SamplingParams(n=n, temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                                max_new_tokens=max_new_tokens, stop=tuple(stop), seed=seed)
        extra = {"prefix_cache": self.prefix_cache} if self.prefix_cache is not None else {}
        r = self.engine.generate(list(prefixes), params, **extra)
        self.prefill_tokens += r.num_prefill_tokens
        self.cached_tokens += r.num_cached_tokens
        self.generated_tokens += r.num_generated_tokens
        rows = [Candidate(text, len(ids), reason, sum(lps) / len(lps) if lps else None)
                for text, ids, reason, lps in zip(r.texts, r.completion_ids, r.finish_reasons, r.logprobs)]
        return [rows[i * n:(i + 1) * n] for i in range(len(prefixes))]


class FeedbackTemplates(Section):
    critique: str = Field(
        "Check this solution to {problem} step by step: {solution}\n"
        "End with 'VERDICT: correct' or 'VERDICT: wrong'.",
        description="Critique prompt; placeholders {problem} and {solution}.")
    revise: str = Field(
        "Problem: {problem}\nPrevious solution: {solution}\nFeedback: {feedback}\n"
        "Write a corrected solution in the same format.",
        description="Revision prompt; placeholders {problem}, {solution}, {feedback}.")
    merge: str = Field(
        "Problem: {problem}\nPartial solutions:\n{solutions}\n"
        "Write one solution that keeps the correct steps of these partial solutions.",
        description="Merge prompt; placeholders {problem} and {solutions} (one per line, numbered).")

    @field_validator("critique", "revise", "merge")
    @classmethod
    def _placeholders(cls, v: str, info) -> str:
        need = {"critique": ("{problem}", "{solution}"), "revise": ("{problem}", "{solution}", "{feedback}"),
                "merge": ("{problem}", "{solutions}")}[info.field_name]
        missing = [p for p in need if p not in v]
        if missing:
            raise ValueError(f"template lacks placeholder(s) {missing}")
        return v


class PolicyFeedback:
    """`critique`, `revise` and `merge` callables: one new chat turn of the policy each, greedy by default."""

    def __init__(self, generate, tokenizer, *, templates: FeedbackTemplates | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 64, temperature: float = 0.0):
        self.generate, self.tokenizer = generate, tokenizer
        self.templates = templates or FeedbackTemplates()
        self.system_prompt, self.max_new_tokens, self.temperature = system_prompt, max_new_tokens, temperature

    def _ask(self, contents: list[str], seed: int) -> list[Candidate]:
        heads = [render_prompt(self.tokenizer, c, self.system_prompt) for c in contents]
        out = self.generate(heads, 1, max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed)
        return [group[0] for group in out]

    def critique(self, prompts: list[str], completions: list[str], *, seed: int = 0) -> list[Candidate]:
        t = self.templates.critique
        return self._ask([t.format(problem=p, solution=c) for p, c in zip(prompts, completions)], seed)

    def revise(self, prompts: list[str], completions: list[str], feedbacks: list[str], *,
               seed: int = 0) -> list[Candidate]:
        t = self.templates.revise
        return self._ask([t.format(problem=p, solution=c, feedback=f)
                          for p, c, f in zip(prompts, completions, feedbacks)], seed)

    def merge(self, prompts: list[str], groups: list[list[str]], *, seed: int = 0) -> list[Candidate]:
        t = self.templates.merge
        lists = ["\n".join(f"{k + 1}. {s}" for k, s in enumerate(g)) for g in groups]
        return self._ask([t.format(problem=p, solutions=s) for p, s in zip(prompts, lists)], seed)


def make_toolkit(engine, tokenizer, cfg, *, score=None, score_steps=None, system_prompt: str | None = None,
                 reuse_prefixes: bool = True, feedback: FeedbackTemplates | None = None):
    """A `Toolkit` over a rollout engine: generation (prefix reuse on the in-process engine), the
    given verifiers, and prompted critique / revise / merge by the same policy."""
    from .base import Toolkit

    cache = PrefixCache() if reuse_prefixes and isinstance(engine, TransformersEngine) else None
    gen = PolicyGenerator(engine, prefix_cache=cache)
    fb = PolicyFeedback(gen, tokenizer, templates=feedback, system_prompt=system_prompt,
                        max_new_tokens=cfg.max_new_tokens)
    return Toolkit(generate=gen, score=score, score_steps=score_steps, critique=fb.critique, revise=fb.revise,
                   merge=fb.merge, cfg=cfg)
