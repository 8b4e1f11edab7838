"""Verifiers for test-time search: a learned outcome model (ORM), a learned process model (PRM or
value model), and the policy's own votes.

Conventions (the reward-model trainer trains in exactly these; keep them in sync):

ORM  `AutoModelForSequenceClassification`, num_labels = 1, `config.pad_token_id` set.
     Input: the token ids of ``render_prompt(tokenizer, prompt, system_prompt) + completion``
     encoded with ``add_special_tokens=False`` (the chat template supplies any BOS); the
     completion is the generated text without EOS; no truncation. Score = the logit the model
     pools at the last non-pad token, i.e. at the last token of that text (a real number,
     higher = better; sigmoid(score) is read as P(correct) where a probability is needed).

PRM  `AutoModelForTokenClassification`, num_labels = 1. Input: the same text, with the
     completion being the concatenation of the steps of a (partial) solution; steps are cut
     by `components.data.steps.split_steps(completion, sep)`, so step i ends at character
     ``len(head) + step_ends(completion, sep)[i]``. Score of step i = sigmoid(logit at the
     last token of step i), that token being the last one (by the fast tokenizer's offsets
     mapping) whose span starts before the step's end. A value model (OREO) uses the same
     positions with `activation="identity"`: V(s) of the state after step i.

PRM as outcome verifier `process_outcome(score_steps, agg)`: a whole completion's score is the
     logit of the aggregate (`last` | `min` | `prod`) of its step probabilities — best-of-N with a
     PRM (Snell et al. 2024 §5.1), when no outcome model of correctness was trained. Scores are
     logits like an ORM's, so a strategy's sigmoid gives the PRM's probability back (weighted
     best-of-N weights each vote by it).
Votes `vote_share`: the logit of the share of the completions of the same prompt in one call
     that reach the same answer (share 0 without an answer): self-consistency as a score, free
     of model calls.
Batches are sorted by length and right padded; every pair is scored independently.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict

import torch

from components.data.prompts import render_prompt
from components.data.steps import split_steps
from components.modeling.models import default_device
from components.rewards import extract_answer
from components.search.aggregate import get_aggregation

ACTIVATIONS = {"sigmoid": torch.sigmoid, "identity": lambda x: x}


def _encode(tokenizer, texts: list[str], offsets: bool = False):
    if not getattr(tokenizer, "is_fast", False) and offsets:
        raise ValueError("tokenizer: the PRM adapter needs a fast tokenizer (offsets mapping)")
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)


def _batches(lengths: list[int], size: int):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + size] for s in range(0, len(order), size)]


def _padded(ids: list[list[int]], pad: int, device):
    width = max(map(len, ids))
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        x[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return x.to(device), mask.to(device)


class _Verifier:
    def __init__(self, model, tokenizer, *, system_prompt: str | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"model: a verifier has num_labels = 1, got {model.config.num_labels}")
        if model.config.pad_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("model/tokenizer: set pad_token_id on both (batches are padded)")
        self.model, self.tokenizer, self.system_prompt, self.batch_size = model, tokenizer, system_prompt, batch_size
        self._heads: dict[str, str] = {}

    def head(self, prompt: str) -> str:
        if prompt not in self._heads:
            self._heads[prompt] = render_prompt(self.tokenizer, prompt, self.system_prompt)
        return self._heads[prompt]

    def _logits(self, ids: list[list[int]]):
        """Yield (batch indices, logits) per length-sorted batch, under inference mode."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for idx in _batches([len(x) for x in ids], self.batch_size):
                    x, mask = _padded([ids[i] for i in idx], self.tokenizer.pad_token_id, device)
                    yield idx, self.model(input_ids=x, attention_mask=mask).logits.float()
        finally:
            self.model.train(was_training)


class OutcomeVerifier(_Verifier):
    """`score(prompts, completions) -> list[float]` over a sequence-classification model."""

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"completions: {len(completions)} for {len(prompts)} prompts")
        ids = _encode(self.tokenizer, [self.head(p) + c for p, c in zip(prompts, completions)])["input_ids"]
        out = [0.0] * len(ids)
        for idx, logits in self._logits(ids):
            for i, v in zip(idx, logits[:, 0].tolist()):
                out[i] = v
        return out


class ProcessVerifier(_Verifier):
    """`score_steps(prompts, partials) -> list[list[float]]` over a token-classification model."""

    def __init__(self, model, tokenizer, *, activation: str = "sigmoid", **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: unknown {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[activation]

    def __call__(self, prompts: list[str], partials: list[list[str]]) -> list[list[float]]:
        if len(prompts) != len(partials):
            raise ValueError(f"partials: {len(partials)} for {len(prompts)} prompts")
        heads = [self.head(p) for p in prompts]
        enc = _encode(self.tokenizer, [h + "".join(s) for h, s in zip(heads, partials)], offsets=True)
        positions = [step_token_positions(off, len(h), steps)
                     for off, h, steps in zip(enc["offset_mapping"], heads, partials)]
        out: list[list[float]] = [[] for _ in partials]
        for idx, logits in self._logits(enc["input_ids"]):
            values = self.activation(logits[..., 0])
            for row, i in enumerate(idx):
                out[i] = values[row, positions[i]].tolist() if positions[i] else []
        return out


def step_token_positions(offsets, start: int, steps: list[str]) -> list[int]:
    """Index of the last token of each step: the last token whose span starts before the step's end.

    `offsets` are the (start, end) character spans of the tokens of head + steps, `start` the
    length of the head. Tokens with empty spans never end a step.
    """
    real = [(a, t) for t, (a, b) in enumerate(offsets) if b > a]
    starts = [a for a, _ in real]
    positions, end = [], start
    for s in steps:
        if not s:
            raise ValueError("partials: a step is empty")
        end += len(s)
        positions.append(real[bisect_left(starts, end) - 1][1])
    return positions


def _logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)), p clipped to [eps, 1 - eps] so that 0 and 1 stay finite."""
    p = min(max(float(p), eps), 1.0 - eps)
    return math.log(p) - math.log1p(-p)


def process_outcome(score_steps, agg: str = "last", sep: str = " "):
    """An outcome scorer `(prompts, completions) -> logits` from a step scorer of probabilities, the
    steps aggregated by `agg`."""
    aggregate = get_aggregation(agg)

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        steps = [split_steps(c, sep) for c in completions]
        keep = [i for i, s in enumerate(steps) if s]  # an empty completion has no step to score: P = 0
        out = [_logit(0.0)] * len(completions)
        scored = score_steps([prompts[i] for i in keep], [steps[i] for i in keep]) if keep else []
        for i, step_scores in zip(keep, scored):
            out[i] = _logit(aggregate(step_scores) if step_scores else 0.0)
        return out

    return score


def vote_share(prompts: list[str], completions: list[str]) -> list[float]:
    """The logit of the share of same-prompt completions in this call reaching the same answer (0 without one)."""
    answers = [extract_answer(c) for c in completions]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    out = [_logit(0.0)] * len(completions)
    for idx in groups.values():
        counts = Counter(answers[i] for i in idx if answers[i] is not None)
        for i in idx:
            out[i] = _logit(counts[answers[i]] / len(idx) if answers[i] is not None else 0.0)
    return out


def load_outcome_verifier(path: str, tokenizer=None, **kwargs) -> OutcomeVerifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(default_device())
    return OutcomeVerifier(model, tokenizer or AutoTokenizer.from_pretrained(path), **kwargs)


def load_process_verifier(path: str, tokenizer=None, **kwargs) -> ProcessVerifier:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(path, use_safetensors=True).to(default_device())
    return ProcessVerifier(model, tokenizer or AutoTokenizer.from_pretrained(path), **kwargs)
