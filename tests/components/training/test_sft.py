import pytest
import torch

from components.config import TrainConfig
from components.training.loop import lr_lambda
from components.training.sft import (EncodingError, collate, encode, encode_chat, encode_rows, make_batch_fn, pack,
                                     run_sft, sft_loss_fn, token_shares)

ROWS = [{"messages": [{"role": "user", "content": f"{a}*{b}"},
                      {"role": "assistant", "content": f"<think>{a}*{b}={a * b}</think><answer>{a * b}</answer>"}]}
        for a in range(5) for b in range(5)]


def test_prompt_tokens_are_masked_from_the_loss(tiny_tokenizer):
    ids, mask = encode_chat(tiny_tokenizer, ROWS[7]["messages"], max_length=64)
    text = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert text == "<think>1*2=2</think><answer>2</answer><|end|>"
    prompt = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert prompt == "<|user|>1*2<|end|><|assistant|>"


def test_rows_encoded_together_are_the_rows_encoded_one_by_one(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token
    rows = [ROWS[0], {"text": "1+2: 1+2=3"}, {"text": "9*9=81" + eos}, ROWS[3], {"text": "7-2=5 " * 20}]
    together = encode_rows(tiny_tokenizer, rows, max_length=24)
    assert together == [encode(tiny_tokenizer, row, 24) for row in rows]
    assert together[1][0][-1] == together[2][0][-1] == tiny_tokenizer.eos_token_id  # one EOS, never two
    assert together[2][0].count(tiny_tokenizer.eos_token_id) == 1 and len(together[4][0]) == 24


def test_a_documents_prompt_is_left_out_of_the_loss_only_with_completion_only(tiny_tokenizer):
    eos, tok = tiny_tokenizer.eos_token, tiny_tokenizer
    pair = {"text": "7+3*4: 3*4=12 7+12=19", "prompt": "7+3*4: "}
    chat = {"text": f"<|user|>9*7{eos}<|assistant|><answer>63</answer>{eos}",
            "prompt": f"<|user|>9*7{eos}<|assistant|>"}
    rows = [pair, chat, {"text": "1+2: 1+2=3"}, ROWS[7]]
    whole = encode_rows(tok, rows, max_length=64)
    assert whole[0] == encode(tok, {"text": pair["text"]}, 64) and sum(whole[0][1]) == len(whole[0][0])
    split = encode_rows(tok, rows, max_length=64, completion_only=True)
    assert split == [encode(tok, row, 64, completion_only=True) for row in rows]
    for (ids, mask), (ids_all, _), row in zip(split[:2], whole, rows):
        assert ids == ids_all  # the same tokens: only which are targets changes
        assert tok.decode([i for i, m in zip(ids, mask) if not m]) == row["prompt"]
    assert tok.decode([i for i, m in zip(*split[0]) if m]) == f"3*4=12 7+12=19{eos}"
    assert tok.decode([i for i, m in zip(*split[1]) if m]) == f"<answer>63</answer>{eos}"
    assert split[2:] == whole[2:]  # plain documents and chat rows are what they were
    cut = encode_rows(tok, [pair], max_length=4, completion_only=True)[0]  # a prompt cut short: no target left
    assert len(cut[0]) == 4 and cut[1] == [0, 0, 0, 0]
    with pytest.raises(EncodingError, match="prompt is not the start"):
        encode_rows(tok, [{"text": "1+2: 1+2=3", "prompt": "2+1: "}], 64, completion_only=True)


def test_batches_are_a_pure_function_of_position():
    encoded = [([i, i], [1, 1]) for i in range(10)]
    a = make_batch_fn(encoded, batch_size=4, grad_accum=2, seed=3, pad_id=0)
    b = make_batch_fn(encoded, batch_size=4, grad_accum=2, seed=3, pad_id=0)
    seen = [a(step, micro)["input_ids"][:, 0].tolist() for step in (1, 2, 3) for micro in (0, 1)]
    assert seen == [b(step, micro)["input_ids"][:, 0].tolist() for step in (1, 2, 3) for micro in (0, 1)]
    first_epoch = sum(seen, [])[:10]
    assert sorted(first_epoch) == list(range(10)), "each example once per epoch"


def test_packing_keeps_each_sequence_to_itself():
    # lengths 5, 3, 4, 2 into rows of 8: first-fit longest first gives [5, 3] and [4, 2]
    examples = [([1] * 5, [1] * 5), ([2] * 3, [0, 1, 1]), ([3] * 4, [1] * 4), ([4] * 2, [1, 1])]
    batch = pack(examples, width=8, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [3, 3, 3, 3, 4, 4, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 1]]
    # a sequence's first token is never a target; the rest keep their own mask; padding has none
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 1, 1, 0, 1, 1], [0, 1, 1, 1, 0, 1, 0, 0]]


def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(tiny_model, tiny_tokenizer):
    examples = [encode(tiny_tokenizer, row, 64) for row in ROWS[:12]]
    examples += [encode(tiny_tokenizer, {"text": f"{a}+{a}: {a}+{a}={2 * a}"}, 64) for a in range(6)]

    def loss_and_grads(batch):
        tiny_model.zero_grad()
        loss, metrics = sft_loss_fn(tiny_model, batch)
        loss.backward()
        return loss.item(), metrics["tokens"], [p.grad.clone() for p in tiny_model.parameters()]

    padded, packed = loss_and_grads(collate(examples, 0)), loss_and_grads(pack(examples, 64, 0))
    assert packed[0] == pytest.approx(padded[0], rel=1e-5) and packed[1] == padded[1]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(padded[2], packed[2]))


def test_an_accumulated_step_is_the_token_mean_of_the_whole_step(tiny_model, tiny_tokenizer):
    # answers of very different lengths, so the two micro-batches hold very different token counts
    rows = [ROWS[3], {"text": "7-2=5 " * 8}, ROWS[9], {"text": "1+1=2"}]
    encoded = [encode(tiny_tokenizer, row, 64) for row in rows]
    whole = make_batch_fn(encoded, batch_size=4, grad_accum=1, seed=0, pad_id=0)(1, 0)
    micros = [make_batch_fn(encoded, batch_size=2, grad_accum=2, seed=0, pad_id=0)(1, m) for m in (0, 1)]

    def grads(batch, w=1.0):
        tiny_model.zero_grad()
        (sft_loss_fn(tiny_model, batch)[0] * w).backward()
        return [p.grad.clone() for p in tiny_model.parameters()]

    weights = token_shares(micros)
    assert sum(weights) == pytest.approx(1.0) and abs(weights[0] - weights[1]) > 0.2, "the split is uneven"
    expected = grads(whole)
    accumulated = [a + b for a, b in zip(grads(micros[0], weights[0]), grads(micros[1], weights[1]))]
    assert all(torch.allclose(e, a, atol=1e-6) for e, a in zip(expected, accumulated))
    halves = [a + b for a, b in zip(grads(micros[0], 0.5), grads(micros[1], 0.5))]
    assert not all(torch.allclose(e, h, atol=1e-4) for e, h in zip(expected, halves)), "equal weights would differ"


def test_schedule_values():
    f = lr_lambda("cosine", warmup=2, total=10)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert abs(f(2) - 1.0) < 1e-12 and abs(f(6) - 0.5) < 1e-12 and abs(f(10)) < 1e-12
    assert lr_lambda("linear", 0, 4)(2) == 0.5 and lr_lambda("constant", 0, 4)(3) == 1.0


def _weights(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_killed_run_resumes_to_the_same_weights(tiny_model, tiny_tokenizer, tmp_path):
    import copy

    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2, ckpt_every=2, log_every=1)
    fresh = copy.deepcopy(tiny_model)
    straight = copy.deepcopy(tiny_model)
    run_sft(straight, tiny_tokenizer, ROWS, cfg, tmp_path / "a", seed=1)

    logged = []
    first = run_sft(fresh, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=1, stop_after=3)
    assert first.resumed_from == 0
    torch.manual_seed(12345)  # a new process would start from other RNG state
    restarted = copy.deepcopy(tiny_model)  # the "new process" rebuilds the model from scratch
    second = run_sft(restarted, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=1,
                     log=lambda m, s: logged.append(s))
    assert second.resumed_from == 3 and logged == [4, 5, 6]
    expected, got = _weights(straight), _weights(restarted)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not all(torch.equal(expected[k], _weights(tiny_model)[k]) for k in expected), "training changed weights"
