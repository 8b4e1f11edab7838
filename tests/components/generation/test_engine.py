"""The batched rollout engine against plain Hugging Face generation and teacher forcing."""
from __future__ import annotations

import pytest
import torch

from components.generation import (
    ENGINES,
    Rollout,
    SamplingParams,
    TransformersEngine,
    VLLMEngine,
    make_engine,
)
from components.generation.sampling import row_keys, uniforms


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def engine(model, tok):
    return TransformersEngine(model, tok)


def chat(tok, content: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def prompts(tok):
    # deliberately different lengths, so batches are left padded
    return [chat(tok, c) for c in ("1+2", "12+3*4-5=?", "7", "3*4+1")]


def teacher_forced_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1] / temperature, dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
    return picked[len(prompt) - 1:]


def hf_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    return out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out


# -- API ---------------------------------------------------------------------------------


def test_registry_and_errors(model, tok):
    assert ENGINES == {"transformers": TransformersEngine, "vllm": VLLMEngine}
    assert isinstance(make_engine("transformers", model, tok, batch_size=8), TransformersEngine)
    with pytest.raises(ValueError, match="transformers.*vllm"):
        make_engine("nope", model, tok)
    with pytest.raises(RuntimeError, match="vllm"):  # no vllm package / no CUDA on this machine
        make_engine("vllm", model, tok)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    assert SamplingParams(stop="</answer>").stop == ("</answer>",)


def test_grouping_and_shapes(engine, tok, prompts):
    r = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=0))
    assert isinstance(r, Rollout) and len(r) == len(prompts) * 3
    assert r.prompt_index == [i for i in range(len(prompts)) for _ in range(3)]
    for row, i in enumerate(r.prompt_index):
        assert r.prompt_ids[row] == tok(prompts[i], add_special_tokens=False).input_ids
        assert len(r.completion_ids[row]) == len(r.logprobs[row]) <= 6
    assert r.num_generated_tokens == sum(map(len, r.completion_ids))
    assert r.tokens_per_s() > 0
    # the G samples of a group are distinct draws
    assert len({tuple(c) for c in r.completion_ids[:3]}) > 1


def test_token_id_prompts_and_progress(engine, tok, prompts):
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    a = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=5, seed=3))
    b = engine.generate(ids, SamplingParams(n=2, max_new_tokens=5, seed=3), progress=True)
    assert a.completion_ids == b.completion_ids


def test_train_mode_restored(model, tok, prompts):
    engine = TransformersEngine(model, tok)
    model.train()
    try:
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=2, seed=0))
        assert model.training
    finally:
        model.eval()
    engine.update_weights(model)  # no-op for the in-process backend


# -- determinism -------------------------------------------------------------------------


def test_seeded_reproducibility(engine, prompts):
    p = SamplingParams(n=4, max_new_tokens=10, seed=123)
    a, b = engine.generate(prompts, p), engine.generate(prompts, p)
    assert a.completion_ids == b.completion_ids and a.logprobs == b.logprobs
    c = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=10, seed=124))
    assert c.completion_ids != a.completion_ids


def test_request_independent_of_batch(model, tok, engine, prompts):
    p = SamplingParams(n=3, max_new_tokens=12, seed=7)
    alone = engine.generate(prompts[:1], p)
    # batched with prompts of other lengths (longer and shorter: different left padding)
    batched = engine.generate(prompts, p)
    assert batched.completion_ids[:3] == alone.completion_ids
    torch.testing.assert_close(
        torch.tensor(sum(batched.logprobs[:3], [])), torch.tensor(sum(alone.logprobs[:3], [])), atol=1e-5, rtol=0
    )
    # other batch cuts and compaction orders: every row is the same
    small = TransformersEngine(model, tok, batch_size=5).generate(prompts, p)
    assert small.completion_ids == batched.completion_ids


def test_uniform_stream_is_uniform():
    keys = row_keys(0, list(range(4000)), [0] * 4000)
    u = torch.cat([uniforms(keys, t) for t in range(5)])
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert not torch.equal(uniforms(keys, 0), uniforms(keys, 1))


# -- greedy / truncation -----------------------------------------------------------------


def test_greedy_matches_hf_generate(model, tok, engine, prompts):
    r = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=12))
    for i, prompt in enumerate(prompts):
        assert r.completion_ids[i] == hf_greedy(model, tok, prompt, 12)


def test_topk1_and_tiny_topp_equal_greedy(engine, prompts):
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=10))
    k1 = engine.generate(prompts, SamplingParams(n=2, top_k=1, max_new_tokens=10, seed=1))
    p0 = engine.generate(prompts, SamplingParams(n=2, top_p=1e-6, max_new_tokens=10, seed=2))
    for row in range(len(k1)):
        assert k1.completion_ids[row] == greedy.completion_ids[k1.prompt_index[row]]
        assert p0.completion_ids[row] == greedy.completion_ids[p0.prompt_index[row]]
    # log-probs are reported before truncation: the full distribution at T=1
    torch.testing.assert_close(torch.tensor(k1.logprobs[0]), torch.tensor(greedy.logprobs[0]), atol=1e-5, rtol=0)


# -- stopping ----------------------------------------------------------------------------


def test_length_finish(engine, prompts):
    r = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=3))
    for c, reason in zip(r.completion_ids, r.finish_reasons):
        assert (reason, len(c)) == ("length", 3) or (reason == "eos" and len(c) <= 3)


def test_eos_finish(engine, tok, prompts):
    eos = tok.eos_token_id
    # near-uniform sampling over a small vocabulary: many rows hit EOS within 40 tokens
    r = engine.generate(prompts, SamplingParams(n=8, temperature=3.0, max_new_tokens=40, seed=0))
    reasons = set(r.finish_reasons)
    assert "eos" in reasons and "length" in reasons
    for c, reason, text in zip(r.completion_ids, r.finish_reasons, r.texts):
        if reason == "eos":
            assert c[-1] == eos and eos not in c[:-1]
            assert "<|end|>" not in text  # decoded with skip_special_tokens
        else:
            assert len(c) == 40 and eos not in c


def test_compaction_and_cache_kind_do_not_change_outputs(model, tok, engine, prompts):
    p = SamplingParams(n=8, temperature=3.0, max_new_tokens=40, seed=0, stop=("4",))
    eager = TransformersEngine(model, tok, compact_after=0.0).generate(prompts, p)  # drop rows at once
    never = TransformersEngine(model, tok, compact_after=float("inf")).generate(prompts, p)
    kinds = {kind: TransformersEngine(model, tok, kv_cache=kind).generate(prompts, p)
             for kind in ("concat", "preallocated", "chunked")}
    kinds["sdpa"] = TransformersEngine(model, tok, decode_attention=False).generate(prompts, p)
    assert all(r.completion_ids == eager.completion_ids for r in [never, *kinds.values()])
    assert engine.generate(prompts, p).completion_ids == eager.completion_ids
    assert eager.finish_reasons == never.finish_reasons and {"eos", "stop"} <= set(eager.finish_reasons)
    for r in [never, *kinds.values()]:
        torch.testing.assert_close(
            torch.tensor(sum(eager.logprobs, [])), torch.tensor(sum(r.logprobs, [])), atol=1e-5, rtol=0
        )


def test_a_chunked_cache_grows_by_chunks_and_masks_what_is_not_written(model, tok):
    """The layer hands attention its whole buffer: filled positions, then zeros, which the mask
    it reports covers; compaction keeps the rows asked for and their zeros."""
    from components.generation.engine import KV_CHUNK, _kv_cache

    cache = _kv_cache(model, "chunked", capacity=100)
    layer = cache.layers[0]
    assert cache.get_mask_sizes(3, 0) == (KV_CHUNK, 0)  # a 3-token prefill will fill a chunk's buffer
    k = torch.randn(2, 4, 3, 8)
    keys, values = layer.update(k, k + 1)
    assert keys.shape == (2, 4, KV_CHUNK, 8) and keys.is_contiguous() and cache.get_seq_length() == 3
    assert torch.equal(keys[:, :, :3], k) and torch.equal(values[:, :, :3], k + 1)
    assert not keys[:, :, 3:].any() and not values[:, :, 3:].any()
    assert layer.get_mask_sizes(KV_CHUNK - 3) == (KV_CHUNK, 0) and layer.get_mask_sizes(KV_CHUNK - 2) == (2 * KV_CHUNK, 0)
    step = torch.randn(2, 4, KV_CHUNK - 2, 8)
    keys, _ = layer.update(step, step)  # past the first chunk: the buffer grows by one
    assert keys.shape[-2] == 2 * KV_CHUNK and torch.equal(keys[:, :, :3], k) and not keys[:, :, KV_CHUNK + 1 :].any()
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape == (1, 4, 2 * KV_CHUNK, 8) and torch.equal(layer.keys[0, :, :3], k[1])
    assert not layer.keys[:, :, KV_CHUNK + 1 :].any() and layer.get_seq_length() == KV_CHUNK + 1


def test_auto_chunks_the_cache_of_transformers_models_only(model):
    """A class from elsewhere (remote code) may size its attention masks without asking the cache."""
    from components.generation.engine import _auto_kv_cache

    class Remote(type(model)):
        pass

    cpu = torch.device("cpu")
    assert _auto_kv_cache(model, cpu) == "chunked" and _auto_kv_cache(model, torch.device("cuda")) == "preallocated"
    assert Remote.__module__ == __name__ and _auto_kv_cache(Remote(model.config), cpu) == "concat"


def test_decode_attention_is_sdpa_by_batched_products():
    """One query a row: the products give SDPA's output under each kind of mask it may get (True
    attends; an additive float mask; none); more queries a row go to SDPA itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from components.generation.engine import _decode_attention

    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    q, k, v = torch.randn(6, 4, 1, 8), torch.randn(6, 4, 11, 8), torch.randn(6, 4, 11, 8)
    keep = torch.rand(6, 1, 1, 11) > 0.3
    keep[..., -1] = True  # the row's own token
    additive = torch.zeros(6, 1, 1, 11).masked_fill(~keep, torch.finfo(torch.float32).min)
    for mask in (keep, additive, None):
        ours, _ = _decode_attention(module, q, k, v, mask, scaling=0.3)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
        assert ours.shape == ref.shape == (6, 1, 4, 8)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    prefill = torch.randn(6, 4, 5, 8)
    assert torch.equal(_decode_attention(module, prefill, k, v, None)[0], sdpa_attention_forward(module, prefill, k, v, None)[0])


def test_decode_attention_only_inside_generation_and_only_for_transformers_sdpa_models(model, tok, prompts):
    from components.generation.engine import DECODE_ATTENTION, _attention_for_decoding

    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, args: seen.append(model.config._attn_implementation))
    try:
        TransformersEngine(model, tok).generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=4))
    finally:
        hook.remove()
    assert seen and set(seen) == {DECODE_ATTENTION} and model.config._attn_implementation == "sdpa"

    class Remote(type(model)):
        pass

    cpu = torch.device("cpu")
    for other, device in ((Remote(model.config), cpu), (model, torch.device("cuda"))):
        with _attention_for_decoding(other, device):
            assert other.config._attn_implementation == "sdpa"


def test_an_unknown_kv_cache_kind_is_refused(model, tok):
    with pytest.raises(ValueError, match="kv_cache must be one of"):
        TransformersEngine(model, tok, kv_cache="paged")


def test_generation_config_eos_list(model, tok, engine, prompts):
    ref = engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=12)).completion_ids[0]
    cut = next(k for k in range(1, len(ref)) if ref[k] not in ref[:k])
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, ref[cut]]
    try:
        r = engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=12))
    finally:
        model.generation_config.eos_token_id = old
    assert r.completion_ids[0] == ref[: cut + 1] and r.finish_reasons == ["eos"]


def test_stop_string_truncation(tok, engine, prompts):
    ref = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, seed=5))
    row = next(r for r, c in enumerate(ref.completion_ids) if len(tok.decode(c, skip_special_tokens=True)) > 6)
    full = tok.decode(ref.completion_ids[row], skip_special_tokens=True)
    stop = full[3:5]
    r = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, seed=5, stop=(stop, "@@never@@")))
    assert r.finish_reasons[row] == "stop"
    assert r.texts[row] == full[: full.index(stop) + len(stop)]
    comp = r.completion_ids[row]
    assert comp == ref.completion_ids[row][: len(comp)]  # same draws up to the stop
    assert stop in tok.decode(comp, skip_special_tokens=True)
    assert stop not in tok.decode(comp[:-1], skip_special_tokens=True)
    for reason, text in zip(r.finish_reasons, r.texts):
        if reason == "stop":
            assert text.endswith(stop) and text.count(stop) == 1


# -- log-probs and training tensors ------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_teacher_forcing(model, engine, prompts, temperature):
    r = engine.generate(prompts, SamplingParams(n=2, temperature=temperature, max_new_tokens=10, seed=11))
    for p, c, lp in zip(r.prompt_ids, r.completion_ids, r.logprobs):
        ref = teacher_forced_logprobs(model, p, c, temperature)
        torch.testing.assert_close(torch.tensor(lp), ref, atol=1e-5, rtol=0)


def test_greedy_logprobs_are_t1(model, engine, prompts):
    r = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
    for p, c, lp in zip(r.prompt_ids, r.completion_ids, r.logprobs):
        torch.testing.assert_close(torch.tensor(lp), teacher_forced_logprobs(model, p, c), atol=1e-5, rtol=0)


def test_to_tensors(tok, engine, prompts):
    r = engine.generate(prompts, SamplingParams(n=2, temperature=3.0, max_new_tokens=12, seed=0))
    pad = tok.pad_token_id
    t = r.to_tensors(pad_id=pad)
    width = max(len(p) + len(c) for p, c in zip(r.prompt_ids, r.completion_ids))
    assert all(v.shape == (len(r), width) for v in t.values())
    for row, (p, c, lp) in enumerate(zip(r.prompt_ids, r.completion_ids, r.logprobs)):
        n_p, n = len(p), len(p) + len(c)
        assert t["input_ids"][row, :n].tolist() == p + c
        assert (t["input_ids"][row, n:] == pad).all()
        assert t["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert t["completion_mask"][row].tolist() == [0] * n_p + [1] * len(c) + [0] * (width - n)
        assert t["old_logprobs"][row, n_p:n].tolist() == pytest.approx(lp)
        assert (t["old_logprobs"][row, :n_p] == 0).all() and (t["old_logprobs"][row, n:] == 0).all()
    # alignment: old_logprobs at position k is the log-prob of input_ids[k] given input_ids[:k]
    row = 0
    ids = t["input_ids"][row : row + 1, : int(t["attention_mask"][row].sum())]
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(input_ids=ids).logits[0, :-1].float() / 3.0, -1)
    scored = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
    mask = t["completion_mask"][row, 1 : ids.shape[1]].bool()
    torch.testing.assert_close(scored[mask], t["old_logprobs"][row, 1 : ids.shape[1]][mask], atol=1e-5, rtol=0)
