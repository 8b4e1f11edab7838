"""Generation throughput of a model under the rollout engine: tokens per second.

Used to report what distillation buys (student vs teacher speed). The same prompts, sampling
parameters and seed are run `warmup` times untimed (allocator, kernels, caches settle), then
`repeats` times timed; the median tokens/s of the timed runs is the result, so one stall on a
shared machine does not decide it. Sampling is seeded, so every repeat generates the same
tokens and the repeats differ only in time.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine, owned


@dataclass
class SpeedResult:
    tokens_per_s: float       # median over the timed repeats
    runs: list[float]         # tokens/s of each timed repeat, in order
    tokens: int               # tokens generated per repeat
    seconds: float            # median wall time of one repeat
    sequences: int            # rows generated per repeat (prompts x n)

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}tokens_per_s": self.tokens_per_s, f"{prefix}generation_s": self.seconds,
                f"{prefix}generated_tokens": float(self.tokens)}


def generation_speed(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, n: int = 1,
                     temperature: float = 1.0, seed: int = 0, batch_size: int = 256, repeats: int = 3,
                     warmup: int = 1, system_prompt: str | None = None, engine=None) -> SpeedResult:
    """Median generation tokens/s of `model` on `prompts` (user turns, chat-templated here).

    `engine` defaults to the in-process transformers engine with `batch_size`; pass another
    `RolloutEngine` (e.g. vLLM) to time that instead.
    """
    if not prompts:
        raise ValueError("generation_speed: prompts is empty")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"generation_speed: need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    with owned(engine, lambda: make_engine("transformers", model, tokenizer, batch_size=batch_size)) as engine:
        for _ in range(warmup):
            engine.generate(texts, params)
        rollouts = [engine.generate(texts, params) for _ in range(repeats)]
    return SpeedResult(
        tokens_per_s=statistics.median(r.tokens_per_s() for r in rollouts),
        runs=[r.tokens_per_s() for r in rollouts],
        tokens=rollouts[-1].num_generated_tokens,
        seconds=statistics.median(r.wall_time_s for r in rollouts),
        sequences=len(rollouts[-1]),
    )
