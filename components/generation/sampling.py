"""Sampling parameters, the `Rollout` result, and the vectorized sampling kernels.

Randomness is counter-based: the uniform that picks token `t` of sample `j` of prompt `i`
is a pure hash of `(seed, i, j, t)`, computed for the whole batch in a few integer tensor
ops. That gives every request its own stream (what a per-request `torch.Generator` seeded
from `(seed, i, j)` would give: the output of a request does not depend on what else is in
the batch, on batch sizes or on compaction order) without a Python loop over rows per token.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                  # samples per prompt (G)
    temperature: float = 1.0    # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0              # 0 => off
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # output is truncated AFTER the stop string (stop string kept)
    seed: int | None = None     # sample j of prompt i draws from a stream keyed by (seed, i, j)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):  # a bare string would be iterated per character
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Rollout:
    """N = len(prompts) * n rows, grouped: rows i*n .. i*n+n-1 belong to prompt i."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # includes the EOS token when the row finished on EOS
    logprobs: list[list[float]]      # log softmax(logits / T) of each chosen token, before top-k/top-p
    texts: list[str]                 # decoded completions, skip_special_tokens=True
    finish_reasons: list[str]        # "eos" | "stop" | "length"
    prompt_index: list[int]          # i for each row
    num_generated_tokens: int
    wall_time_s: float
    num_prefill_tokens: int = 0      # prompt tokens the prefill computed
    num_cached_tokens: int = 0       # prompt tokens reused from a prefix cache instead

    def __len__(self) -> int:
        return len(self.completion_ids)

    def tokens_per_s(self) -> float:
        return self.num_generated_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_tensors(self, pad_id: int, device=None) -> dict[str, torch.Tensor]:
        """Right-padded training tensors, all [N, L] with L = longest prompt+completion.

        input_ids: prompt + completion then `pad_id`; attention_mask: 1 on real tokens;
        completion_mask: 1 on completion tokens (incl. EOS); old_logprobs: the sampling
        log-prob of the token AT that position of input_ids (0 elsewhere), i.e. the log-prob
        predicted from position p-1 — shift as usual (`logits[:, :-1]` vs `input_ids[:, 1:]`).
        """
        n = len(self.completion_ids)
        lengths = [len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids)]
        width = max(lengths, default=0)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        completion_mask = torch.zeros((n, width), dtype=torch.long)
        old_logprobs = torch.zeros((n, width), dtype=torch.float32)
        for r, (p, c, lp) in enumerate(zip(self.prompt_ids, self.completion_ids, self.logprobs)):
            lp_len, total = len(p), len(p) + len(c)
            input_ids[r, :total] = torch.tensor(p + c, dtype=torch.long)
            attention_mask[r, :total] = 1
            completion_mask[r, lp_len:total] = 1
            if c:
                old_logprobs[r, lp_len:total] = torch.tensor(lp, dtype=torch.float32)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "old_logprobs": old_logprobs,
        }
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out


# ---------------------------------------------------------------------------------------
# counter-based RNG


def row_keys(seed: int, prompt_indices: list[int], sample_indices: list[int], device=None) -> torch.Tensor:
    """[B, 2] int64 tensor of two 32-bit keys per row, a hash of (seed, i, j)."""
    keys = []
    for i, j in zip(prompt_indices, sample_indices):
        d = hashlib.blake2b(f"{seed}:{i}:{j}".encode(), digest_size=8).digest()
        keys.append((int.from_bytes(d[:4], "little"), int.from_bytes(d[4:], "little")))
    return torch.tensor(keys, dtype=torch.long, device=device).reshape(-1, 2)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    # "lowbias32" finalizer (C. Wellons): a well-mixed bijection on 32-bit integers.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _fmix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """[B] float32 uniforms in [0, 1) for token `step` of each row (keys from `row_keys`)."""
    s = _fmix32_int((step * 0x9E3779B9 + 0x632BE5AB) & _M32)
    x = _fmix32(keys[:, 0] ^ s)
    x = _fmix32(x ^ keys[:, 1])
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


# ---------------------------------------------------------------------------------------
# sampling


def sample_next(
    logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor | None, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of every row. Returns (tokens [B] long, logprobs [B] float32).

    The log-prob is log_softmax(logits / T) of the chosen token before top-k/top-p (T = 1
    when greedy); the choice itself uses the truncated distribution.
    """
    logits = logits.float()
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

    scaled = logits / params.temperature if params.temperature != 1.0 else logits
    logp = torch.log_softmax(scaled, dim=-1)
    filtered = scaled
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= params.top_p, float("-inf"))
        filtered = torch.empty_like(filtered).scatter_(-1, order, sorted_logits)
    probs = torch.softmax(filtered, dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    target = uniforms(keys, step)[:, None] * total
    # strictly below the total so the pick always lands on a token with non-zero mass
    target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max_(vocab - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
