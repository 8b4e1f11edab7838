"""Batched rollout engines: many prompts x G samples at once with a KV cache.

`TransformersEngine` runs any Hugging Face causal LM in-process:

* rows are ordered by prompt length and cut into batches of at most `batch_size` rows;
* each batch prefills every distinct prompt ONCE (left padded, padding-aware position ids)
  and then expands the KV cache to the G rows that share the prompt;
* the decode loop runs over the whole batch under `torch.inference_mode()` with a KV cache
  written in place, not concatenated every step (`_kv_cache`); finished rows are dropped
  from the batch (cache, mask, positions, RNG keys) once (their share of the batch) x
  (steps left) >= `compact_after`, so the batch shrinks as rows finish without paying a
  full cache copy for every single finished row;
* on CPU a step's attention, one query a row, is two batched products and a softmax
  (`_decode_attention`), not SDPA's CPU kernel, which is built for blocks of queries;
* sampling is vectorized (see `sampling.py`): one host sync per step (the "all done?"
  check, which also tells which rows to drop), plus the new tokens when stop strings are
  in use (stop strings are checked on the decoded tail of each live row only, once a step);
* with a `PrefixCache` (see `prefix_cache.py`) the prefill computes each prompt only past its
  longest cached prefix: the cached keys/values are left padded into the batch's cache, the
  new tokens follow them, and positions come from the attention mask, so every token keeps
  the position it was computed at. Prompts and rows that did not end on EOS are stored back.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from typing import Callable, Protocol, runtime_checkable

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from components.modeling.tokenizer import token_ids

from .prefix_cache import PrefixCache
from .sampling import Rollout, SamplingParams, row_keys, sample_next

_EOS, _STOP, _LENGTH = 1, 2, 0
_REASONS = {_EOS: "eos", _STOP: "stop", _LENGTH: "length"}


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self, prompts: list[str] | list[list[int]], params: SamplingParams, progress: bool = False
    ) -> Rollout: ...

    def update_weights(self, model) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------
# KV caches written in place

# "auto": "preallocated" on CUDA, "chunked" elsewhere (`_auto_kv_cache`)
KV_CACHES = ("auto", "concat", "preallocated", "chunked")
KV_CHUNK = 8  # positions a "chunked" buffer grows by (8 measured faster than 16 on 2 CPU cores)


def _kv_cache(model, kind: str, capacity: int) -> DynamicCache:
    """The decode loop's KV cache.

    `concat` is transformers' `DynamicCache`, whose `update` concatenates the whole cache every
    step (an O(L) copy per token). The other two write each step's keys/values in place
    (`_BufferLayer`): `preallocated` into buffers of `capacity` positions, handing attention a
    view of the filled part (CUDA's kernels read strided keys as they are; the CPU kernel copies
    them, which costs what the concatenation did); `chunked` into contiguous buffers grown
    `KV_CHUNK` positions at a time, handing attention the whole buffer with its unwritten
    columns zero and masked (no copy per step, at most KV_CHUNK - 1 masked columns). Caches with
    other layer types (sliding windows, linear attention) stay concatenating.
    """
    cache = DynamicCache(config=model.config)
    if kind != "concat" and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        chunk = KV_CHUNK if kind == "chunked" else None
        cache.layers = [_BufferLayer(capacity, chunk) for _ in cache.layers]
    return cache


def _auto_kv_cache(model, device: torch.device) -> str:
    """The cache kind of `kv_cache="auto"`: on CUDA "preallocated"; elsewhere "chunked" for
    transformers' own model classes, which size their attention masks by the cache's
    `get_mask_sizes`, and "concat" for any other class (remote code may size them by the sequence
    length alone)."""
    if device.type == "cuda":
        return "preallocated"
    return "chunked" if _transformers_class(model) else "concat"


def _transformers_class(model) -> bool:
    """Whether the model (under a peft wrapper, the model it wraps) is one of transformers' own classes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__module__.startswith("transformers.")


class _BufferLayer(DynamicLayer):
    """A full-attention cache layer whose keys/values live in buffers written in place.

    chunk None: the buffers hold `capacity` positions (more if a write needs it) and `keys` /
    `values` are views of the filled part. chunk k: the buffers grow k positions at a time and
    `keys` / `values` are all of them; the unwritten columns are zero (a masked column's weight
    is exactly 0, and 0 x 0 adds nothing) and `get_mask_sizes` reports the buffer's length, so
    the model pads the attention mask with zeros over them.
    """
    is_croppable = False

    def __init__(self, capacity: int, chunk: int | None = None):
        super().__init__()
        self.capacity, self.chunk = capacity, chunk
        self.length = 0
        self._kbuf = self._vbuf = None

    def _size(self, end: int) -> int:
        """Buffer positions once `end` positions are filled."""
        size = self._kbuf.shape[-2] if self._kbuf is not None else 0
        if end <= size:
            return size
        return max(end, self.capacity) if self.chunk is None else -(-end // self.chunk) * self.chunk

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._kbuf is None or end > self._kbuf.shape[-2]:
            self._realloc(None, self._size(end), key_states, value_states)
        self._kbuf[:, :, self.length : end].copy_(key_states)
        self._vbuf[:, :, self.length : end].copy_(value_states)
        self.length = end
        self._expose()
        return self.keys, self.values

    def _expose(self) -> None:
        shown = self.length if self.chunk is None else self._kbuf.shape[-2]
        self.keys, self.values = self._kbuf[:, :, :shown], self._vbuf[:, :, :shown]

    def _realloc(self, indices, size, key_like, value_like):
        """New buffers of `size` positions holding the filled part (rows `indices` if given)."""
        k_old, v_old = self._kbuf, self._vbuf
        if k_old is not None and indices is not None:
            k_old = k_old[:, :, : self.length].index_select(0, indices)
            v_old = v_old[:, :, : self.length].index_select(0, indices)
        b = k_old.shape[0] if k_old is not None else key_like.shape[0]
        h, d, dv = key_like.shape[1], key_like.shape[-1], value_like.shape[-1]
        self._kbuf = key_like.new_empty((b, h, size, d))
        self._vbuf = value_like.new_empty((b, h, size, dv))
        if k_old is not None and self.length:
            self._kbuf[:, :, : self.length].copy_(k_old[:, :, : self.length])
            self._vbuf[:, :, : self.length].copy_(v_old[:, :, : self.length])
        if self.chunk is not None:  # attention reads the unwritten columns too
            self._kbuf[:, :, self.length :].zero_()
            self._vbuf[:, :, self.length :].zero_()
        self._expose()

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        end = self.length + query_length
        return (end if self.chunk is None else self._size(end)), 0

    def batch_select_indices(self, indices):
        if self._kbuf is not None:
            self._realloc(indices, self._kbuf.shape[-2], self._kbuf, self._vbuf)

    def batch_repeat_interleave(self, repeats: int):
        if self._kbuf is not None:
            rows = torch.arange(self._kbuf.shape[0], device=self._kbuf.device)
            self.batch_select_indices(rows.repeat_interleave(repeats))

    def reorder_cache(self, beam_idx):
        self.batch_select_indices(beam_idx)

    def reset(self):
        self.length = 0
        self._kbuf = self._vbuf = None
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("rollout cache layers cannot be cropped")


# ---------------------------------------------------------------------------------------
# attention for one query a row

DECODE_ATTENTION = "r1flow_decode"  # SDPA, but a decode step on CPU attends by batched products
_DELEGATED = ("softcap", "s_aux", "position_bias", "cache")  # what only SDPA's own path handles


def _decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except for one query a row on CPU without dropout: then
    softmax(q k^T * scale, masked) v as two batched products. SDPA's CPU flash kernel is built
    for blocks of queries; on a decode step of 256 rows x 4 heads it took about twice as long as
    these products. The masks are SDPA's (`sdpa_mask`: True attends, or an additive float mask)."""
    if (query.shape[2] != 1 or query.device.type != "cpu" or dropout or key.shape[1] != query.shape[1]
            or any(kwargs.get(k) is not None for k in _DELEGATED)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    out = torch.matmul(scores.softmax(-1), value)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, _decode_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)


@contextmanager
def _attention_for_decoding(model, device: torch.device):
    """Within the block, a transformers model on CPU that attends by SDPA attends by
    `_decode_attention` (the same as SDPA wherever a call has more than one query a row)."""
    config = getattr(model, "config", None)
    if (device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa"
            or not _transformers_class(model)):
        yield
        return
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


# ---------------------------------------------------------------------------------------
# the in-process engine


class TransformersEngine:
    """In-process batched sampler over a Hugging Face causal LM (shares the module)."""

    def __init__(self, model, tokenizer, batch_size: int = 256, device=None, compact_after: float = 3.0,
                 kv_cache: str = "auto", workers: int = 1, decode_attention: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        # drop finished rows once (dead share of the batch) x (steps left) reaches this
        self.compact_after = compact_after
        # how the decode loop keeps keys/values (`_kv_cache`): "auto" writes them in place, into
        # preallocated buffers on CUDA and into contiguous buffers grown in chunks elsewhere
        self.kv_cache = kv_cache
        # on CPU, decode steps attend by batched products instead of SDPA's kernel (`_decode_attention`)
        self.decode_attention = decode_attention
        # workers > 1: helper processes decode whole batches beside this one (CPU only; workers.py)
        self._pool = None
        if workers > 1:
            if self._device.type != "cpu":
                raise ValueError(f"rollout workers > 1 decode on CPU processes; the model is on {self._device}")
            from .workers import WorkerPool

            self._pool = WorkerPool(model, tokenizer, workers, {"batch_size": batch_size,
                                    "compact_after": compact_after, "kv_cache": kv_cache,
                                    "decode_attention": decode_attention})

    def close(self) -> None:
        """Stop the helper processes, if any (also done when the engine is collected or the process exits)."""
        if self._pool is not None:
            self._pool.close()

    # -- public API --------------------------------------------------------------------

    def update_weights(self, model) -> None:
        """No-op: this backend samples from the very module being trained."""
        if model is not None and model is not self.model:
            self.model = model

    def generate(
        self, prompts: list[str] | list[list[int]], params: SamplingParams, progress=False,
        prefix_cache: PrefixCache | None = None,
    ) -> Rollout:
        """Sample `params.n` completions per prompt; with `prefix_cache`, reuse and extend its KV.
        `progress`: False, True (a tqdm bar), or a callable
        `progress(rows_done, rows_total, {"tok/s": …}, phase="sampling")`."""
        start = time.perf_counter()
        prompt_ids = self._encode(prompts)
        n, num_prompts = params.n, len(prompt_ids)
        total_rows = num_prompts * n
        seed = params.seed
        if seed is None and not params.greedy:
            seed = int(torch.randint(0, 2**62, (1,)).item())

        completions: list[list[int]] = [[] for _ in range(total_rows)]
        logprobs: list[list[float]] = [[] for _ in range(total_rows)]
        reasons = ["length"] * total_rows
        texts = [""] * total_rows
        prefill = [0, 0]  # prompt tokens computed, prompt tokens reused from the prefix cache

        # Longest prompts first: similar lengths share a batch (little padding) and the
        # largest prefill happens while memory is emptiest.
        order = sorted(range(total_rows), key=lambda r: (-len(prompt_ids[r // n]), r))
        batches = [order[s : s + self.batch_size] for s in range(0, total_rows, self.batch_size)]

        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_rows, desc="rollout", unit="seq")
        done = 0
        was_training = self.model.training
        self.model.eval()
        try:
            # decoding runs in the model's dtype even inside a mixed-precision stage (see
            # components/training/precision.py): on CPU, bf16 autocast slows these small matmuls
            with torch.inference_mode(), torch.autocast(self.model.device.type, enabled=False):
                for rows, out in self._decode(batches, prompt_ids, params, seed, prefix_cache, prefill):
                    for r, (toks, lps, reason, text) in zip(rows, out):
                        completions[r], logprobs[r], reasons[r], texts[r] = toks, lps, reason, text
                    tok_s = sum(map(len, completions)) / (time.perf_counter() - start)
                    if bar is not None:
                        bar.update(len(rows))
                        bar.set_postfix(tok_s=f"{tok_s:.0f}")
                    elif callable(progress):
                        done += len(rows)
                        progress(done, total_rows, {"tok/s": tok_s}, phase="sampling")
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()

        return Rollout(
            prompt_ids=[list(prompt_ids[r // n]) for r in range(total_rows)],
            completion_ids=completions,
            logprobs=logprobs,
            texts=texts,
            finish_reasons=reasons,
            prompt_index=[r // n for r in range(total_rows)],
            num_generated_tokens=sum(len(c) for c in completions),
            wall_time_s=time.perf_counter() - start,
            num_prefill_tokens=prefill[0],
            num_cached_tokens=prefill[1],
        )

    # -- internals ---------------------------------------------------------------------

    def _decode(self, batches, prompt_ids, params, seed, prefix_cache, prefill):
        """Yield (rows, results) per batch: all in this process, or spread over the helper processes
        (not with a prefix cache, which lives here)."""
        if self._pool is None or prefix_cache is not None or len(batches) < 2:
            for rows in batches:
                yield rows, self._generate_batch(rows, prompt_ids, params, seed, prefix_cache, prefill)
            return

        def local(rows):
            counts = [0, 0]
            return self._generate_batch(rows, prompt_ids, params, seed, prefill=counts), counts

        def remote(rows):  # only the prompts the batch needs travel
            return rows, {r // params.n: prompt_ids[r // params.n] for r in rows}, params, seed

        for i, (out, counts) in self._pool.map(self.model, batches, local, remote):
            prefill[0] += counts[0]
            prefill[1] += counts[1]
            yield batches[i], out

    def _encode(self, prompts) -> list[list[int]]:
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of strings or of token-id lists, not a single string")
        prompts = list(prompts)
        if not prompts:
            return []
        if all(isinstance(p, str) for p in prompts):
            ids = token_ids(self.tokenizer, prompts)
        else:
            ids = [[int(t) for t in p] for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        return ids

    @property
    def _device(self) -> torch.device:
        if self.device is not None:
            return self.device
        return next(self.model.parameters()).device

    def _eos_ids(self) -> list[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
        if isinstance(extra, int):
            ids.add(extra)
        elif extra is not None:
            ids.update(int(e) for e in extra)
        return sorted(ids)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def _generate_batch(self, rows, prompt_ids, params: SamplingParams, seed, prefix_cache=None, prefill=None):
        """Generate for the given global rows; returns [(tokens, logprobs, reason, text)] in row order."""
        with _attention_for_decoding(self.model, self._device) if self.decode_attention else nullcontext():
            return self._sample_batch(rows, prompt_ids, params, seed, prefix_cache, prefill)

    def _sample_batch(self, rows, prompt_ids, params: SamplingParams, seed, prefix_cache, prefill):
        model, device, n = self.model, self._device, params.n
        batch = len(rows)
        max_new = params.max_new_tokens
        pad = self._pad_id()

        # -- prefill: each distinct prompt once, left padded --------------------------------
        uniq: dict[int, int] = {}
        for r in rows:
            uniq.setdefault(r // n, len(uniq))
        uniq_prompts = [prompt_ids[i] for i in uniq]
        logits, cache, attn, counts = self._prefill(uniq_prompts, max_new, prefix_cache)
        width = attn.shape[1]
        if prefill is not None:
            prefill[0] += counts[0]
            prefill[1] += counts[1]
        if prefix_cache is not None:
            prefix_cache.store(cache, range(len(uniq_prompts)), uniq_prompts, [m.nonzero().squeeze(-1) for m in attn])
        expand = [uniq[r // n] for r in rows]
        if expand != list(range(len(uniq_prompts))):
            idx = torch.tensor(expand, dtype=torch.long, device=device)
            cache.batch_select_indices(idx)
            logits, attn = logits.index_select(0, idx), attn.index_select(0, idx)
        prompt_of = [uniq_prompts[u] for u in expand]
        next_pos = attn.sum(-1)  # [B] position of the first generated token
        # the attention mask for every position the batch can reach, sliced per step
        attn_full = torch.cat([attn, attn.new_ones((batch, max_new))], dim=-1)

        keys = None
        if not params.greedy:
            keys = row_keys(seed, [r // n for r in rows], [r % n for r in rows], device=device)
        eos = torch.tensor(self._eos_ids(), dtype=torch.long, device=device)

        # -- decode ------------------------------------------------------------------------
        tokens_out = torch.full((batch, max_new), pad, dtype=torch.long, device=device)
        logp_out = torch.zeros((batch, max_new), dtype=torch.float32, device=device)
        length_out = torch.full((batch,), max_new, dtype=torch.long, device=device)
        reason_out = torch.full((batch,), _LENGTH, dtype=torch.long, device=device)
        live = torch.arange(batch, device=device)   # batch-local row of each live slot
        dead = torch.zeros(batch, dtype=torch.bool, device=device)  # finished but not yet compacted

        stops = params.stop
        host_tokens: list[list[int]] | None = [[] for _ in range(batch)] if stops else None
        live_host = list(range(batch))
        tail = max((len(s) for s in stops), default=0) + 4

        for step in range(max_new):
            tok, lp = sample_next(logits, params, keys, step)
            tokens_out[live, step] = tok
            logp_out[live, step] = lp
            finished = torch.isin(tok, eos)
            reason = torch.where(finished, _EOS, _LENGTH)
            if stops:
                hit = self._stop_hits(tok.tolist(), live_host, dead, host_tokens, stops, tail)
                if hit:
                    hit_t = torch.zeros_like(finished)
                    hit_t[torch.tensor(hit, device=device)] = True
                    reason = torch.where(~finished & hit_t, _STOP, reason)
                    finished = finished | hit_t
            newly = finished & ~dead
            length_out[live] = torch.where(newly, step + 1, length_out[live])
            reason_out[live] = torch.where(newly, reason, reason_out[live])
            dead = dead | finished
            if step == max_new - 1:
                break
            num_dead = int(dead.sum())  # the one host sync per step
            if num_dead == dead.numel():
                break
            # Dropping rows copies the whole cache once (~1-2 decode steps of work); it pays
            # off when the dead share of the batch times the steps left is large enough.
            if num_dead and num_dead * (max_new - step - 1) >= self.compact_after * dead.numel():
                if prefix_cache is not None:  # dropped rows leave the cache: store them first
                    gone = dead.nonzero().squeeze(-1)
                    _store_rows(prefix_cache, cache, gone.tolist(), live[gone].tolist(), prompt_of, attn, width,
                                tokens_out, length_out, reason_out)
                keep = (~dead).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, tok, next_pos = live[keep], tok[keep], next_pos[keep]
                attn_full = attn_full.index_select(0, keep)
                if keys is not None:
                    keys = keys[keep]
                if stops:
                    keep_host = keep.tolist()
                    live_host = [live_host[k] for k in keep_host]
                dead = dead[keep]
            cur = width + step + 1
            out = model(
                input_ids=tok[:, None], attention_mask=attn_full[:, :cur], position_ids=(next_pos + step)[:, None],
                past_key_values=cache, use_cache=True,
            )
            logits = out.logits[:, -1, :]

        if prefix_cache is not None:
            _store_rows(prefix_cache, cache, list(range(len(live))), live.tolist(), prompt_of, attn, width,
                        tokens_out, length_out, reason_out)

        # -- collect -----------------------------------------------------------------------
        lengths = length_out.tolist()
        reasons = reason_out.tolist()
        toks_all = tokens_out.tolist()
        lps_all = logp_out.tolist()
        completions = [toks_all[b][: lengths[b]] for b in range(batch)]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        results = []
        for b in range(batch):
            text = texts[b]
            if reasons[b] == _STOP:
                text = _truncate_after_stop(text, stops)
            results.append((completions[b], lps_all[b][: lengths[b]], _REASONS[reasons[b]], text))
        return results

    def _prefill(self, prompts: list[list[int]], max_new: int, prefix_cache: PrefixCache | None):
        """One forward over the distinct prompts, left padded, past their cached prefixes.

        Row layout: [pad][cached prefix] [pad][new tokens]; the cached part is written into the
        cache before the forward. Returns (last-position logits [U, V], cache, attention mask
        [U, W] over every column, (tokens computed, tokens reused)).
        """
        model, device, pad = self.model, self._device, self._pad_id()
        none = (0, None, None)
        hits = [prefix_cache.match(p, len(p) - 1) if prefix_cache is not None else none for p in prompts]
        past = max(h[0] for h in hits)
        new = [p[c:] for p, (c, _, _) in zip(prompts, hits)]
        width = max(map(len, new))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attn = torch.zeros((len(prompts), past + width), dtype=torch.long)
        for u, (p, (c, _, _)) in enumerate(zip(new, hits)):
            ids[u, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[u, past - c: past] = 1
            attn[u, past + width - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp_min_(0)[:, past:]

        kind = self.kv_cache if self.kv_cache != "auto" else _auto_kv_cache(model, device)
        cache = _kv_cache(model, kind, past + width + max_new)
        if prefix_cache is not None:
            prefix_cache.check(cache)
        if past:
            prefix_cache.preload(cache, hits, past)
        kwargs = dict(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True)
        try:
            out = model(**kwargs, logits_to_keep=1)  # only the last position's logits
        except TypeError:  # a model without `logits_to_keep`
            out = model(**kwargs)
        counts = (sum(map(len, new)), sum(h[0] for h in hits))
        return out.logits[:, -1, :], out.past_key_values, attn, counts

    def _stop_hits(self, new_tokens, live_host, dead, host_tokens, stops, tail) -> list[int]:
        """Slots (in the current live batch) whose decoded tail now contains a stop string."""
        dead_host = dead.tolist() if bool(dead.any()) else None
        hits = []
        for slot, (b, t) in enumerate(zip(live_host, new_tokens)):
            if dead_host is not None and dead_host[slot]:
                continue
            seq = host_tokens[b]
            seq.append(t)
            text = self.tokenizer.decode(seq[-tail:], skip_special_tokens=True)
            if any(s in text for s in stops):
                hits.append(slot)
        return hits


# ---------------------------------------------------------------------------------------
# prefix-cache plumbing


def _store_rows(prefix_cache, cache, slots, rows, prompt_of, attn, width, tokens_out, length_out, reason_out):
    """Store batch rows `rows` (at cache slots `slots`): prompt + generated tokens but the last.

    The last token was sampled but never fed to the model, so it has no keys/values yet. Rows
    that ended on EOS are stored only if the cache keeps finished rows.
    """
    lengths, reasons = length_out[rows].tolist(), reason_out[rows].tolist()
    keep = [k for k, r in enumerate(reasons) if r != _EOS or prefix_cache.keep_finished]
    seqs, cols = [], []
    for k in keep:
        b, used = rows[k], lengths[k] - 1
        seqs.append(list(prompt_of[b]) + tokens_out[b, :used].tolist())
        gen_cols = torch.arange(width, width + used, device=attn.device)
        cols.append(torch.cat([attn[b].nonzero().squeeze(-1), gen_cols]))
    prefix_cache.store(cache, [slots[k] for k in keep], seqs, cols)


def _truncate_after_stop(text: str, stops) -> str:
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


# ---------------------------------------------------------------------------------------
# registry


from .vllm_engine import VLLMEngine  # noqa: E402  (vllm itself is imported lazily inside)

ENGINES: dict[str, type] = {"transformers": TransformersEngine, "vllm": VLLMEngine}


def make_engine(backend: str, model, tokenizer, **kwargs) -> RolloutEngine:
    try:
        cls = ENGINES[backend]
    except KeyError:
        raise ValueError(f"unknown rollout backend {backend!r}; choose one of {sorted(ENGINES)}") from None
    return cls(model, tokenizer, **kwargs)


def owned(engine: RolloutEngine | None, make: Callable[[], RolloutEngine]) -> AbstractContextManager:
    """`with owned(engine, make) as e:` -- `engine` itself when one was passed in (whoever made it
    closes it), else a new one from `make()`, closed when the block ends."""
    return nullcontext(engine) if engine is not None else closing(make())
