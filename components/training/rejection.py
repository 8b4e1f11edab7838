"""Rejection sampling (DeepSeek-R1 §2.3.3): sample K completions per prompt, keep verified ones.

`rejection_sample` draws K = `samples_per_prompt` completions per prompt from the current
policy with the rollout engine (seeded, so the same model, rows and seed give the same
samples), then `filter_samples` keeps, per prompt, the completions that pass every filter,
applied in this order (the stats count the survivors of each step, a funnel):

1. correct      the `verifier` reward (e.g. ``exact_int``, ``math_equiv``) scores it >= `accept_score`
                (1.0 by default);
2. well_formed  the ``format`` reward accepts it (``<think>…</think><answer>…</answer>``);
                when `require_format` is off this step passes everything;
3. in_length    not truncated (finish reason != "length") and its token count lies in
                ``[min_tokens, max_tokens]``;
4. unique       its stripped text differs from every earlier survivor of the same prompt;
5. kept         the FIRST `keep_per_prompt` survivors in sample order. Samples are i.i.d.,
                so the first k accepted ones are a uniform draw from the accepted set: the
                cap does not bias the data towards short (or long) reasoning.

Each kept completion becomes an SFT row ``{"messages": [(system,) user, assistant],
"prompt", "answer", ...the prompt row's extra columns}`` with the stripped completion as
the assistant turn. Model output is only compared as text (regexes, math-verify's parser),
never executed. `components.io.dataset_digest` gives the derived data its content address.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine, owned
from components.rewards import get_reward
from components.seeds import derive_seed

FUNNEL = ("generated", "correct", "well_formed", "in_length", "unique", "kept")


@dataclass
class RejectionStats:
    """Counts of the filter funnel (each step counts survivors of it and every step before)."""

    prompts: int
    generated: int
    correct: int
    well_formed: int
    in_length: int
    unique: int
    kept: int
    prompts_with_any: int  # prompts with at least one kept sample
    acceptance_rate: float  # kept / generated
    tokens: int  # completion tokens generated
    seconds: float  # wall time of generation + filtering (0 for `filter_samples` alone)

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def filter_samples(rows: list[dict], completions: list[list[str]], lengths: list[list[int]],
                   finish_reasons: list[list[str]], *, verifier: str, require_format: bool, min_tokens: int,
                   max_tokens: int, keep_per_prompt: int, system_prompt: str | None = None,
                   accept_score: float = 1.0) -> tuple[list[dict], RejectionStats]:
    """Keep the verified, well-formed, complete, in-length, unique completions, at most k per prompt.

    `completions[i]`, `lengths[i]` (tokens) and `finish_reasons[i]` are the samples of
    `rows[i]` in sample order. Pure: no model, no randomness. Returns the SFT rows (prompt
    order, then sample order) and the funnel stats; when nothing passes, the rows are empty
    and the caller decides how to fail.
    """
    _check_inputs(rows, completions, lengths, finish_reasons, min_tokens, max_tokens, keep_per_prompt)
    correctness = get_reward(verifier)
    is_formatted = get_reward("format")
    counts = dict.fromkeys(FUNNEL, 0)
    out: list[dict] = []
    prompts_with_any = 0
    for i, (row, texts, lens, reasons) in enumerate(zip(rows, completions, lengths, finish_reasons)):
        counts["generated"] += len(texts)
        if not texts:
            continue
        try:
            correct = correctness(texts, answer=[row["answer"]] * len(texts))
        except Exception as e:
            raise ValueError(f"verifier {verifier!r} failed on rows[{i}] (prompt {row['prompt']!r}, "
                             f"answer {row['answer']!r}): {e}") from e
        formatted = is_formatted(texts) if require_format else [1.0] * len(texts)
        seen: set[str] = set()
        kept_here = 0
        for text, n_tok, reason, ok, fmt in zip(texts, lens, reasons, correct, formatted):
            if ok < accept_score:
                continue
            counts["correct"] += 1
            if fmt < 1.0:
                continue
            counts["well_formed"] += 1
            if reason == "length" or not min_tokens <= n_tok <= max_tokens:
                continue
            counts["in_length"] += 1
            key = text.strip()
            if key in seen:
                continue
            seen.add(key)
            counts["unique"] += 1
            if kept_here >= keep_per_prompt:
                continue
            kept_here += 1
            out.append(sft_row(row, key, system_prompt))
        counts["kept"] += kept_here
        prompts_with_any += kept_here > 0
    stats = RejectionStats(
        prompts=len(rows), **counts, prompts_with_any=prompts_with_any,
        acceptance_rate=counts["kept"] / counts["generated"] if counts["generated"] else 0.0,
        tokens=sum(sum(lens) for lens in lengths), seconds=0.0,
    )
    return out, stats


def sft_row(row: dict, completion: str, system_prompt: str | None = None) -> dict:
    """A chat SFT example for one accepted completion; the prompt row's extra columns ride along."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": completion}]
    extras = {k: v for k, v in row.items() if k not in ("messages", "prompt", "answer")}
    return {**extras, "messages": messages, "prompt": row["prompt"], "answer": row["answer"]}


def rejection_sample(model, tokenizer, rows: list[dict], cfg, seed: int, engine=None,
                     progress=False) -> tuple[list[dict], RejectionStats]:
    """Sample `cfg.samples_per_prompt` completions per row (cfg: RejectionConfig), then `filter_samples`.

    Rows are canonical ``{"prompt", "answer", ...}`` (at most `cfg.limit` are used). The
    engine defaults to the in-process transformers engine over `model`; its sampling seed is
    derived from `seed`, so the same inputs give the same rows.
    """
    if not rows:
        raise ValueError("rejection_sample: rows is empty (no prompts to sample from)")
    start = time.perf_counter()
    rows = list(rows[: cfg.limit]) if cfg.limit else list(rows)
    for i, row in enumerate(rows):
        _check_row(row, i)
    k = cfg.samples_per_prompt
    prompts = [render_prompt(tokenizer, row["prompt"], cfg.system_prompt) for row in rows]
    params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=derive_seed(seed, "rejection_sampling"))
    with owned(engine, lambda: make_engine(cfg.rollout.backend, model, tokenizer, **cfg.rollout.engine_kwargs())) as e:
        rollout = e.generate(prompts, params, progress=progress)
    if len(rollout.texts) != len(rows) * k:
        raise ValueError(f"rollout engine returned {len(rollout.texts)} samples for {len(rows)} prompts x {k}")
    completions: list[list[str]] = [[] for _ in rows]
    lengths: list[list[int]] = [[] for _ in rows]
    reasons: list[list[str]] = [[] for _ in rows]
    for text, ids, reason, i in zip(rollout.texts, rollout.completion_ids, rollout.finish_reasons,
                                    rollout.prompt_index):
        completions[i].append(text)
        lengths[i].append(len(ids))  # includes the EOS token when the sample ended on EOS
        reasons[i].append(reason)
    kept, stats = filter_samples(
        rows, completions, lengths, reasons, verifier=cfg.verifier, require_format=cfg.require_format,
        min_tokens=cfg.min_tokens, max_tokens=cfg.max_tokens, keep_per_prompt=cfg.keep_per_prompt,
        system_prompt=cfg.system_prompt, accept_score=cfg.accept_score,
    )
    stats.tokens = int(rollout.num_generated_tokens)
    stats.seconds = time.perf_counter() - start
    return kept, stats


# --------------------------------------------------------------------------- validation


def _check_row(row, i: int) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"rows[{i}] is a {type(row).__name__}, expected a dict with 'prompt' and 'answer'")
    missing = [c for c in ("prompt", "answer") if c not in row]
    if missing:
        raise ValueError(f"rows[{i}] lacks column(s) {missing} (has {sorted(row)})")


def _check_inputs(rows, completions, lengths, finish_reasons, min_tokens, max_tokens, keep_per_prompt) -> None:
    if not rows:
        raise ValueError("filter_samples: rows is empty (no prompts)")
    for name, value in (("completions", completions), ("lengths", lengths), ("finish_reasons", finish_reasons)):
        if len(value) != len(rows):
            raise ValueError(f"{name} has {len(value)} groups for {len(rows)} rows")
    for i, row in enumerate(rows):
        _check_row(row, i)
        if not len(completions[i]) == len(lengths[i]) == len(finish_reasons[i]):
            raise ValueError(f"rows[{i}]: {len(completions[i])} completions, {len(lengths[i])} lengths and "
                             f"{len(finish_reasons[i])} finish reasons")
    if keep_per_prompt < 1:
        raise ValueError(f"keep_per_prompt must be >= 1, got {keep_per_prompt}")
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) > max_tokens ({max_tokens}): nothing could be kept")
