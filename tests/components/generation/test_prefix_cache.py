"""The radix-tree prefix cache, and the engine with prefix reuse against the engine without it."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.generation import PrefixCache, SamplingParams, TransformersEngine

pytestmark = pytest.mark.usefixtures("single_thread")


def kv_of(tokens: list[int]):
    """Fake keys/values [layers=2, heads=1, n, d=2] that encode (token, position)."""
    def fetch(a, b):
        rows = torch.tensor([[float(t), float(p)] for p, t in enumerate(tokens)][a:b])
        keys = rows[None, None].repeat(2, 1, 1, 1)
        return keys, -keys
    return fetch


def test_radix_tree_match_insert_split():
    cache = PrefixCache()
    assert cache.match([1, 2, 3], 3) == (0, None, None)
    cache.insert([1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    cache.insert([1, 2, 5], kv_of([1, 2, 5]))  # splits the edge [1, 2, 3, 4] after [1, 2]
    assert cache.num_tokens == 5  # 1 2 | 3 4 | 5: shared prefixes stored once
    n, keys, values = cache.match([1, 2, 3, 9], 4)
    assert n == 3
    assert keys.shape == (2, 1, 3, 2) and torch.equal(values, -keys)
    assert keys[0, 0, :, 0].tolist() == [1, 2, 3] and keys[0, 0, :, 1].tolist() == [0, 1, 2]
    n, keys, _ = cache.match([1, 2, 5, 7], 4)
    assert n == 3 and keys[0, 0, :, 0].tolist() == [1, 2, 5] and keys[0, 0, :, 1].tolist() == [0, 1, 2]
    assert cache.match([1, 2, 3, 4], 2)[0] == 2  # never more than `limit`
    assert cache.match([7, 1], 2)[0] == 0


def test_insert_fetches_only_the_new_suffix():
    cache = PrefixCache()
    cache.insert([1, 2, 3], kv_of([1, 2, 3]))
    asked = []

    def fetch(a, b):
        asked.append((a, b))
        return kv_of([1, 2, 3, 4, 5])(a, b)

    cache.insert([1, 2, 3, 4, 5], fetch)
    assert asked == [(3, 5)]
    cache.insert([1, 2], fetch)  # already there: nothing fetched
    assert asked == [(3, 5)]


def test_eviction_drops_least_recently_used_leaves():
    per_token = 2 * (2 * 1 * 2 * 4)  # keys + values, 2 layers x 1 head x d=2, float32
    cache = PrefixCache(max_bytes=6 * per_token)
    cache.insert([1, 2, 3], kv_of([1, 2, 3]))
    cache.insert([7, 8, 9], kv_of([7, 8, 9]))
    cache.match([1, 2, 3, 0], 3)  # touch the first: the second is now least recently used
    cache.insert([4, 5], kv_of([4, 5]))  # 8 tokens > 6: evict down to 90 % (5.4 tokens)
    assert cache.match([1, 2, 3, 0], 3)[0] == 3
    assert cache.match([7, 8, 9, 0], 3)[0] == 0
    assert cache.num_bytes <= 0.9 * cache.max_bytes and cache.num_tokens == 5
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(max_bytes=0)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def chat(tok, content: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("engine_kw", [{}, {"compact_after": 0.0}, {"kv_cache": "concat"}, {"kv_cache": "preallocated"}])
def test_reuse_gives_the_same_samples_and_computes_fewer_prompt_tokens(model, tok, engine_kw):
    engine = TransformersEngine(model, tok, **engine_kw)
    prompts = [chat(tok, c) for c in ("1+2", "12+3*4-5", "7", "3*4+1")]
    first = SamplingParams(n=3, temperature=2.0, max_new_tokens=10, seed=5, stop=("3",))
    cache = PrefixCache()
    a = engine.generate(prompts, first, prefix_cache=cache)
    b = engine.generate(prompts, first)
    assert a.completion_ids == b.completion_ids
    assert a.num_prefill_tokens == b.num_prefill_tokens == sum(map(len, prompts)) and a.num_cached_tokens == 0
    # children: each stop-ended row continued (as token ids: no re-tokenization), plus a fresh prompt
    kids = [p + c for p, c, r in zip(a.prompt_ids, a.completion_ids, a.finish_reasons) if r == "stop"]
    assert len(kids) >= 2
    batch = kids + [chat(tok, "9*9")]
    params = SamplingParams(n=2, temperature=1.5, max_new_tokens=8, seed=9)
    reused = engine.generate(batch, params, prefix_cache=cache)
    fresh = engine.generate(batch, params)
    assert reused.completion_ids == fresh.completion_ids and reused.finish_reasons == fresh.finish_reasons
    torch.testing.assert_close(torch.tensor(sum(reused.logprobs, [])), torch.tensor(sum(fresh.logprobs, [])),
                               atol=1e-5, rtol=0)
    # every child recomputes only its last token (sampled, never fed); the new prompt reuses the
    # longest prefix it shares with anything stored (the chat template's opening)
    stored = prompts + [p + c[:-1] for p, c, r in zip(a.prompt_ids, a.completion_ids, a.finish_reasons) if r == "stop"]
    shared = max(_lcp(batch[-1], s) for s in stored)
    assert shared >= 1
    assert fresh.num_prefill_tokens == sum(map(len, batch)) and fresh.num_cached_tokens == 0
    assert reused.num_cached_tokens == sum(len(k) - 1 for k in kids) + shared
    assert reused.num_prefill_tokens == len(kids) + len(batch[-1]) - shared


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_rows_ended_on_eos_are_kept_only_on_request(model, tok):
    engine = TransformersEngine(model, tok)
    prompts = [chat(tok, "1+2")]
    params = SamplingParams(n=8, temperature=3.0, max_new_tokens=12, seed=1)
    lean, keep = PrefixCache(), PrefixCache(keep_finished=True)
    engine.generate(prompts, params, prefix_cache=lean)
    r = engine.generate(prompts, params, prefix_cache=keep)
    seqs = {reason: [] for reason in ("eos", "length")}
    for p, c, reason in zip(r.prompt_ids, r.completion_ids, r.finish_reasons):
        if len(c) > 1:
            seqs[reason].append(p + c[:-1])
    assert seqs["eos"] and seqs["length"]
    for s in seqs["length"]:  # a row cut by the token cap can be continued: both keep it
        assert lean.match(s, len(s))[0] == keep.match(s, len(s))[0] == len(s)
    for s in seqs["eos"]:
        assert keep.match(s, len(s))[0] == len(s)
        assert lean.match(s, len(s))[0] < len(s)
