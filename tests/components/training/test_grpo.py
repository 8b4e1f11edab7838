"""GRPO on a tiny random Llama: it learns a toy reward, skips flat groups, resumes exactly,
survives a raising reward, and measures KL to its reference."""
from __future__ import annotations

import copy

import pytest
import torch

from components.config import LoraConfig, RLConfig, RewardItem, RolloutConfig
from components.generation import Rollout, SamplingParams, make_engine
from components.training.loop import NoUpdateError
from tests.conftest import temporary_rewards
from components.seeds import derive_seed
from components.training.grpo import PromptPool, make_rollout_engine, minibatch_plan, pick_prompts, run_grpo
from components.training.rollout_batch import (RolloutBatch, batch_logprobs, completion_logprobs, length_buckets,
                                                 shared_prompts)


# --------------------------------------------------------------------------- test-local rewards


def digit_fraction(completions, **_):
    """Share of completion characters that are digits: learnable by a random tiny model."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def constant(completions, **_):
    return [1.0] * len(completions)


def boom(completions, **_):
    raise RuntimeError("this reward is broken")


def by_difficulty(completions, difficulty, **_):
    """easy -> 1, hard -> 0, mid -> parity of the text length (pass rate near 1/2)."""
    return [1.0 if d == "easy" else 0.0 if d == "hard" else float(len(c) % 2 == 0)
            for c, d in zip(completions, difficulty)]


@pytest.fixture(scope="module", autouse=True)
def _rewards():
    with temporary_rewards(test_digits=digit_fraction, test_constant=constant, test_boom=boom,
                      test_by_difficulty=by_difficulty):
        yield


ROWS = [{"prompt": f"{a}+{b}", "answer": str(a + b)} for a in range(4) for b in range(4)]


pytestmark = pytest.mark.usefixtures("single_thread")


def rl_config(**overrides) -> RLConfig:
    base = dict(steps=4, prompts_per_step=4, group_size=8, max_new_tokens=8, minibatch_size=32, lr=1e-2,
                beta=0.0, ckpt_every=2, log_every=1, table_every=2, rewards=[RewardItem(name="test_digits")])
    return RLConfig(**{**base, **overrides})


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def mean_digit_reward(model, tokenizer) -> float:
    engine = make_engine("transformers", model, tokenizer)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in ROWS]
    rollout = engine.generate(prompts, SamplingParams(n=8, max_new_tokens=8, seed=123))
    scores = digit_fraction(rollout.texts)
    return sum(scores) / len(scores)


def collect():
    logged: dict[int, dict] = {}
    return logged, lambda metrics, step: logged.__setitem__(step, dict(metrics))


# --------------------------------------------------------------------------- pure pieces


def test_prompt_picks_are_a_pure_function_of_seed_and_iteration():
    picks = [pick_prompts(10, 4, seed=3, it=it) for it in (1, 2, 3)]
    assert picks == [pick_prompts(10, 4, seed=3, it=it) for it in (1, 2, 3)]
    assert sorted(sum(picks, [])[:10]) == list(range(10)), "every prompt once per epoch"
    assert pick_prompts(10, 4, seed=4, it=1) != picks[0]
    assert derive_seed(1, "rollout", 2) != derive_seed(1, "rollout", 3)


def test_the_prompt_pool_draws_the_pure_stream_until_prompts_retire():
    rows = [10 + i for i in range(10)]  # the pool holds row indices (those the pass-rate band kept)
    pool = PromptPool(rows, seed=3, keep_at_least=4)
    assert [pool.pick(4) for _ in range(3)] == [[rows[i] for i in pick_prompts(10, 4, seed=3, it=it)]
                                                 for it in (1, 2, 3)]
    pool.retire([10, 11, 12])
    later = sum((pool.pick(4) for _ in range(5)), [])
    assert not {10, 11, 12} & set(later) and set(later) == set(rows) - {10, 11, 12}
    # retiring stops at keep_at_least active prompts: an iteration never draws one prompt twice
    pool.retire(rows)
    assert pool.active() == 4 and len(set(pool.pick(4))) == 4
    restored = PromptPool(rows, seed=3, keep_at_least=4)
    restored.load_state_dict(pool.state_dict())
    assert [restored.pick(4) for _ in range(3)] == [pool.pick(4) for _ in range(3)]


def test_minibatch_plan_covers_every_row_once_per_epoch():
    plan = minibatch_plan(20, rl_config(ppo_epochs=2, minibatch_size=4, grad_accum=2), seed=0, it=1)
    assert len(plan) == 2 * 3 and all(len(step) <= 2 for step in plan)
    first_epoch = torch.cat([m for step in plan[:3] for m in step])
    assert sorted(first_epoch.tolist()) == list(range(20))


def _rollout(prompts, completions) -> Rollout:
    """A rollout of these prompt and completion ids (no texts, zero log-probs)."""
    return Rollout(prompts, completions, [[0.0] * len(c) for c in completions], [""] * len(prompts),
                   ["length"] * len(prompts), list(range(len(prompts))), sum(map(len, completions)), 1.0)


def test_one_forward_matches_a_full_forward(tiny_model, tiny_tokenizer):
    engine = make_engine("transformers", tiny_model, tiny_tokenizer)
    prompts = [[5, 6, 7], [5, 6, 7, 8, 9]]
    rollout = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6, seed=1))
    batch = RolloutBatch.from_rollout(rollout, [0, 1, 2, 3], torch.zeros(4), tiny_tokenizer.pad_token_id, "cpu")
    aligned = batch_logprobs(tiny_model, batch, temperature=1.0, chunk=3)
    tiny_model.eval()
    with torch.no_grad():
        full = torch.log_softmax(tiny_model(input_ids=batch.input_ids,
                                            attention_mask=batch.attention_mask).logits, -1)
    expected = full[:, :-1].gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    m = batch.completion_mask[:, 1:]
    assert torch.allclose(aligned[:, 1:][m], expected[m], atol=1e-5)
    assert torch.all(aligned[~batch.completion_mask] == 0)
    # the sampler's own log-probs agree (same weights, temperature 1)
    sampled = torch.tensor(sum(rollout.logprobs, []))
    assert torch.allclose(aligned[batch.completion_mask], sampled, atol=1e-4)
    logp, entropy = completion_logprobs(tiny_model, batch, 1.0, with_entropy=True)
    assert logp.shape == entropy.shape == (4, batch.input_ids.shape[1] - batch.start)


def test_length_buckets_give_the_same_logprobs_as_one_forward(tiny_model, tiny_tokenizer):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (5, 1), (4, 30), (3, 33), (6, 60), (4, 61)]  # (prompt, completion) lengths
    prompts = [torch.randint(8, 60, (p,), generator=g).tolist() for p, _ in shapes]
    completions = [torch.randint(8, 60, (c,), generator=g).tolist() for _, c in shapes]
    batch = RolloutBatch.from_rollout(_rollout(prompts, completions), [5, 0, 3, 1, 4, 2], torch.zeros(6),
                                      tiny_tokenizer.pad_token_id, "cpu")
    assert len(length_buckets(batch.seq_len)) > 1
    tiny_model.train()
    logp, entropy = completion_logprobs(tiny_model, batch, temperature=0.7, with_entropy=True)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits / 0.7
    full = torch.log_softmax(logits[:, batch.start - 1 : -1], -1)
    expected = full.gather(-1, batch.input_ids[:, batch.start :, None]).squeeze(-1)
    m = batch.completion_mask[:, batch.start :]
    assert torch.allclose(logp[m], expected[m], atol=1e-5)
    assert torch.allclose(entropy[m], -(full.exp() * full).sum(-1)[m], atol=1e-5)
    logp[m].sum().backward()
    assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


def test_rows_sharing_a_prompt_compute_it_once_with_the_same_logprobs_and_gradients(tiny_model, tiny_tokenizer):
    g = torch.Generator().manual_seed(1)
    distinct = [torch.randint(8, 60, (n,), generator=g).tolist() for n in (3, 9, 5)]
    lengths = [1, 2, 30, 61, 4, 33, 2, 60, 5, 31, 1, 58]  # three completion buckets, one-token completions
    prompts = [distinct[i % 3] for i in range(12)]
    completions = [torch.randint(8, 60, (c,), generator=g).tolist() for c in lengths]
    order = torch.randperm(12, generator=g).tolist()
    batch = RolloutBatch.from_rollout(_rollout(prompts, completions), order, torch.zeros(12),
                                      tiny_tokenizer.pad_token_id, "cpu")
    assert shared_prompts(tiny_model, batch) is not None
    plain_calls = []
    hook = tiny_model.register_forward_pre_hook(lambda _, args, kw: plain_calls.append(kw["input_ids"].shape[0]),
                                                with_kwargs=True)
    try:
        completion_logprobs(tiny_model, batch, temperature=0.7)  # without share_prompts: whole rows, as always
    finally:
        hook.remove()
    assert sum(plain_calls) == 12
    calls = []
    hook = tiny_model.register_forward_pre_hook(lambda _, args, kw: calls.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    tiny_model.train()
    try:
        logp, entropy = completion_logprobs(tiny_model, batch, temperature=0.7, with_entropy=True, share_prompts=True)
    finally:
        hook.remove()
    assert calls[0] == (3, 8)  # the three prompts but their last token, once each, left padded
    # then every row once: its prompt's last token and its completion but the last token, in length buckets
    assert sum(rows for rows, _ in calls[1:]) == 12 and len(calls) > 2 and max(w for _, w in calls[1:]) == 61
    m = batch.completion_mask[:, batch.start:]
    assert torch.all(logp[~m] == 0) and torch.all(entropy[~m] == 0)
    tiny_model.zero_grad()
    (logp * m).sum().backward()
    shared_grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    tiny_model.zero_grad()  # the reference: every row's whole sequence in one forward, no cache
    logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits / 0.7
    full = torch.log_softmax(logits[:, batch.start - 1: -1], -1)
    expected = full.gather(-1, batch.input_ids[:, batch.start:, None]).squeeze(-1)
    assert torch.allclose(logp[m], expected[m], atol=1e-5)
    assert torch.allclose(entropy[m], -(full.exp() * full).sum(-1)[m].detach(), atol=1e-5)
    (expected * m).sum().backward()
    for name, p in tiny_model.named_parameters():
        assert torch.allclose(shared_grads[name], p.grad, atol=1e-5), name


def test_sharing_prompts_gives_bitwise_the_same_gradients_every_time(tiny_model, tiny_tokenizer):
    """A run must repeat itself: the prompts' keys and values are handed to the rows by a gather
    whose backward adds in a fixed order (indexing `k[rows]` accumulated its gradient with
    parallel atomic adds, so two runs of one GRPO recipe drew other samples after ~20 iterations)."""
    g = torch.Generator().manual_seed(4)
    distinct = [torch.randint(8, 60, (int(n),), generator=g).tolist() for n in torch.randint(6, 13, (32,), generator=g)]
    prompts = [distinct[i // 8] for i in range(256)]  # 32 prompts x G = 8, as GRPO samples them
    completions = [torch.randint(8, 60, (int(n),), generator=g).tolist() for n in torch.randint(10, 45, (256,), generator=g)]
    batch = RolloutBatch.from_rollout(_rollout(prompts, completions), torch.randperm(256, generator=g).tolist(),
                                      torch.randn(256, generator=g), tiny_tokenizer.pad_token_id, "cpu")
    m = batch.completion_mask[:, batch.start:]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two threads; one core still runs them
    try:
        grads = []
        for _ in range(4):
            tiny_model.zero_grad()
            logp, _ = completion_logprobs(tiny_model, batch, 1.0, share_prompts=True)
            (logp * m * batch.advantages[:, None]).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


def test_prompts_are_shared_only_where_they_repeat_and_the_model_caches_plainly(tiny_model, tiny_tokenizer):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(8, 60, (6,), generator=g).tolist() for _ in range(4)]
    completions = [torch.randint(8, 60, (8,), generator=g).tolist() for _ in range(4)]
    distinct = RolloutBatch.from_rollout(_rollout(prompts, completions), [0, 1, 2, 3], torch.zeros(4),
                                         tiny_tokenizer.pad_token_id, "cpu")
    assert shared_prompts(tiny_model, distinct) is None
    grouped = RolloutBatch.from_rollout(_rollout([prompts[0]] * 4, completions), [0, 1, 2, 3], torch.zeros(4),
                                        tiny_tokenizer.pad_token_id, "cpu")
    found = shared_prompts(tiny_model, grouped)
    assert found is not None and found[0] == [prompts[0]] and found[1].tolist() == [0, 0, 0, 0]
    model = copy.deepcopy(tiny_model)
    model.activation_checkpointing_enable()  # runs without a cache: nothing to share through
    assert shared_prompts(model, grouped) is None


# --------------------------------------------------------------------------- training behaviour


def test_grpo_learns_a_toy_reward(tiny_model, tiny_tokenizer, tmp_path):
    before_w, before_r = weights(tiny_model), mean_digit_reward(tiny_model, tiny_tokenizer)
    logged, log = collect()
    tables = []
    result = run_grpo(tiny_model, tiny_tokenizer, ROWS, rl_config(steps=12, ckpt_every=100), tmp_path, seed=0,
                      log=log, table=lambda rows, step: tables.append((step, rows)))
    after_r = mean_digit_reward(tiny_model, tiny_tokenizer)
    assert not same_weights(before_w, weights(tiny_model))
    assert after_r > before_r + 0.15, (before_r, after_r)
    assert result.steps == 12 and result.resumed_from == 0 and result.prompts == len(ROWS)
    assert sorted(logged) == list(range(1, 13))
    first = logged[1]
    for key in ("reward/mean", "reward/test_digits", "reward/failures/test_digits", "accuracy", "clip_fraction",
                "entropy", "completion_length", "groups_kept_frac", "tokens_per_s", "time/generate_frac",
                "time/optimize_frac", "loss", "lr", "grad_norm"):
        assert key in first, key
    assert "kl" not in first, "beta == 0: no reference, no KL"
    assert 0 < first["tokens_trained"] <= first["tokens"]
    full = [m for m in logged.values() if m["groups_kept_frac"] == 1]
    assert all(m["tokens_trained"] == m["tokens"] for m in full)
    assert first["clip_fraction"] == 0.0, "one optimizer step per batch: the ratio is exactly 1"
    assert [s for s, _ in tables] == [2, 4, 6, 8, 10, 12]
    assert set(tables[0][1][0]) == {"prompt", "completion", "reward", "answer"} and len(tables[0][1]) == 32


def test_prompts_are_shared_with_grouped_query_attention_and_not_with_a_sliding_window():
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    g = torch.Generator().manual_seed(3)
    distinct = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (4, 7)]
    completions = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (1, 9, 3, 17, 2, 12)]
    batch = RolloutBatch.from_rollout(_rollout([distinct[i % 2] for i in range(6)], completions), list(range(6)),
                                      torch.zeros(6), 0, "cpu")
    m = batch.completion_mask[:, batch.start:]
    shape = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)  # two query heads per key/value head
    torch.manual_seed(0)
    qwen = AutoModelForCausalLM.from_config(Qwen2Config(**shape, use_sliding_window=False)).train()
    assert shared_prompts(qwen, batch) is not None
    whole, _ = completion_logprobs(qwen, batch, 1.0)
    shared, _ = completion_logprobs(qwen, batch, 1.0, share_prompts=True)
    assert torch.allclose(whole[m], shared[m], atol=1e-5)
    windowed = AutoModelForCausalLM.from_config(MistralConfig(**shape, sliding_window=8))
    assert shared_prompts(windowed, batch) is None  # its cache keeps a window: whole rows instead


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sharing_prompts_trains_as_without_it_up_to_rounding(tiny_model, tiny_tokenizer, tmp_path, finetune):
    from components.modeling.models import add_lora

    cfg = rl_config(steps=2, ckpt_every=5, beta=0.1, ppo_epochs=2)  # old and reference log-probs shared too
    runs = {}
    for share in (False, True):
        model = copy.deepcopy(tiny_model)
        if finetune == "lora":  # its reference is the base with the adapters off
            model = add_lora(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        start = weights(model)
        logged, log = collect()
        run_grpo(model, tiny_tokenizer, ROWS, cfg.model_copy(update={"share_prompts": share}), tmp_path / str(share),
                 seed=0, log=log)
        assert not same_weights(start, weights(model))  # it trained
        runs[share] = weights(model), logged
    (plain, plain_log), (shared, shared_log) = runs[False], runs[True]
    assert all(torch.allclose(plain[k], shared[k], atol=1e-5) for k in plain)
    for step in (1, 2):
        assert shared_log[step]["loss"] == pytest.approx(plain_log[step]["loss"], abs=1e-5)
        assert shared_log[step]["kl"] == pytest.approx(plain_log[step]["kl"], abs=1e-6)


def test_zero_variance_groups_are_skipped_and_a_run_without_updates_fails_closed(tiny_model, tiny_tokenizer,
                                                                               tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    cfg = rl_config(steps=2, rewards=[RewardItem(name="test_constant")], beta=0.1)
    with pytest.raises(NoUpdateError, match="GRPO: no optimizer step was taken in 2 iterations"):
        run_grpo(tiny_model, tiny_tokenizer, ROWS, cfg, tmp_path, seed=0, log=log)
    assert same_weights(before, weights(tiny_model))
    assert [logged[s]["groups_kept_frac"] for s in (1, 2)] == [0.0, 0.0]
    assert logged[1]["groups_dropped"] == 4 and "loss" not in logged[1]
    assert logged[1]["tokens_trained"] == 0 < logged[1]["tokens"], "dropped groups train no tokens"
    assert logged[2]["reward/mean"] == 1.0
    assert (tmp_path / "step-00000002").is_dir(), "the skipped iterations still count"


def test_killed_run_resumes_to_the_same_weights(tiny_model, tiny_tokenizer, tmp_path):
    # ppo_epochs=2 and several minibatches: exercises old log-probs, the KL to a copied
    # reference, and the optimizer/scheduler state of the checkpoint
    cfg = rl_config(steps=4, ppo_epochs=2, minibatch_size=8, grad_accum=2, beta=0.05, warmup_steps=2,
                    schedule="cosine", lr=3e-3)
    straight = copy.deepcopy(tiny_model)
    run_grpo(straight, tiny_tokenizer, ROWS, cfg, tmp_path / "a", seed=7)

    first = run_grpo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=7, stop_after=2)
    assert first.resumed_from == 0
    torch.manual_seed(999)  # a new process starts from other RNG state
    logged, log = collect()
    restarted = copy.deepcopy(tiny_model)  # ...and rebuilds the initial model
    second = run_grpo(restarted, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=7, log=log)
    assert second.resumed_from == 2 and sorted(logged) == [3, 4]
    assert same_weights(weights(straight), weights(restarted))
    assert not same_weights(weights(straight), weights(tiny_model)), "training changed the weights"


def test_rollout_workers_train_the_weights_one_process_trains(tiny_model, tiny_tokenizer, tmp_path):
    # a helper process decodes some of every iteration's batches (rollout.workers: 2)
    cfg = rl_config(steps=3, rollout=RolloutConfig(batch_size=8, workers=2))
    one = copy.deepcopy(tiny_model)
    run_grpo(one, tiny_tokenizer, ROWS, rl_config(steps=3, rollout=RolloutConfig(batch_size=8)), tmp_path / "a", seed=3)
    two = copy.deepcopy(tiny_model)
    engine = make_rollout_engine(cfg.rollout, two, tiny_tokenizer, cfg.prompts_per_step * cfg.group_size)
    try:
        assert engine._pool.wait_ready(timeout=120)
        run_grpo(two, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=3, engine=engine)
        assert engine._pool.helper_batches >= 3, "the helper decoded no batch of some iteration"
    finally:
        engine.close()
    assert same_weights(weights(one), weights(two))
    assert not same_weights(weights(one), weights(tiny_model))


def test_solved_prompts_retire_and_a_resumed_run_draws_what_an_unbroken_one_would(tiny_model, tiny_tokenizer,
                                                                                      tmp_path):
    rows = [{"prompt": f"{i}*{i}", "answer": str(i * i), "difficulty": d}
            for i, d in enumerate(["easy", "mid", "easy", "mid", "mid", "easy", "mid", "mid"])]
    cfg = rl_config(steps=6, prompts_per_step=2, ckpt_every=1, table_every=1, retire_solved=True,
                    rewards=[RewardItem(name="test_by_difficulty")])
    straight, tables = copy.deepcopy(tiny_model), {}
    logged, log = collect()
    run_grpo(straight, tiny_tokenizer, rows, cfg, tmp_path / "a", seed=1, log=log,
             table=lambda r, step: tables.__setitem__(step, {x["prompt"] for x in r}))
    easy = {r["prompt"] for r in rows if r["difficulty"] == "easy"}
    assert logged[6]["prompts/retired"] == 3 and logged[6]["prompts/active"] == 5
    drawn = [p for step in sorted(tables) for p in tables[step]]
    assert all(drawn.count(p) == 1 for p in easy), "an easy prompt is solved when first drawn, then never again"
    assert sum(drawn.count(p) for p in set(drawn) - easy) > len(set(drawn) - easy), "the others come back"
    run_grpo(copy.deepcopy(tiny_model), tiny_tokenizer, rows, cfg, tmp_path / "b", seed=1, stop_after=4)
    restarted, resumed_tables = copy.deepcopy(tiny_model), {}
    run_grpo(restarted, tiny_tokenizer, rows, cfg, tmp_path / "b", seed=1,
             table=lambda r, step: resumed_tables.__setitem__(step, {x["prompt"] for x in r}))
    assert sorted(resumed_tables) == [5, 6] and all(resumed_tables[s] == tables[s] for s in (5, 6))
    assert same_weights(weights(straight), weights(restarted))


def test_a_checkpoint_without_the_pool_state_is_refused_not_resumed_from_scratch(tiny_model, tiny_tokenizer,
                                                                                    tmp_path):
    cfg = rl_config(steps=4, ckpt_every=1)
    run_grpo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path, seed=1, stop_after=2)
    latest = sorted(tmp_path.glob("step-*"))[-1]
    (latest / "state.json").unlink()  # as a checkpoint written by a version without the prompt pool
    with pytest.raises(RuntimeError, match="holds no run state \\(prompt_pool\\).*delete the folder"):
        run_grpo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path, seed=1)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000001", "step-00000002"]


def test_a_raising_reward_does_not_stop_training(tiny_model, tiny_tokenizer, tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    cfg = rl_config(steps=2, rewards=[RewardItem(name="test_digits"), RewardItem(name="test_boom", weight=0.5)])
    run_grpo(tiny_model, tiny_tokenizer, ROWS, cfg, tmp_path, seed=0, log=log)
    assert [logged[s]["reward/failures/test_boom"] for s in (1, 2)] == [32, 32]
    assert logged[2]["reward/test_boom"] == 0.0 and logged[2]["reward/failures/test_digits"] == 0
    assert not same_weights(before, weights(tiny_model))


def test_kl_to_the_reference(tiny_model, tiny_tokenizer, tmp_path):
    logged, log = collect()
    cfg = rl_config(steps=3, beta=0.1)
    run_grpo(tiny_model, tiny_tokenizer, ROWS, cfg, tmp_path, seed=0, log=log, reference=copy.deepcopy(tiny_model))
    kls = [logged[s]["kl"] for s in (1, 2, 3)]
    assert abs(kls[0]) < 1e-6, "policy == reference at the first update"
    assert all(k >= 0 for k in kls) and kls[2] > 1e-6


def test_peft_policy_uses_its_base_as_reference(tiny_model, tiny_tokenizer, tmp_path):
    from components.modeling.models import add_lora

    policy = add_lora(tiny_model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    logged, log = collect()
    run_grpo(policy, tiny_tokenizer, ROWS, rl_config(steps=3, beta=0.1), tmp_path, seed=0, log=log)
    assert abs(logged[1]["kl"]) < 1e-6 and logged[3]["kl"] > 1e-6
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if n in base), "base frozen"
    saved = sorted(tmp_path.glob("step-*"))[-1] / "trainable.safetensors"
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(str(saved))), "only adapters are checkpointed"


def test_pass_rate_band_keeps_prompts_with_signal(tiny_model, tiny_tokenizer, tmp_path):
    rows = [{"prompt": f"{i}*{i}", "answer": str(i * i), "difficulty": d}
            for i, d in enumerate(["easy", "hard", "mid", "mid", "easy", "mid", "hard", "mid"])]
    cfg = rl_config(steps=2, rewards=[RewardItem(name="test_by_difficulty")], pass_rate_band=(0.1, 0.9))
    logged, log = collect()
    tables = []
    result = run_grpo(tiny_model, tiny_tokenizer, rows, cfg, tmp_path, seed=0, log=log,
                      table=lambda r, step: tables.append(r))
    mid = {r["prompt"] for r in rows if r["difficulty"] == "mid"}
    assert result.prompts == logged[0]["prompts/kept"] and logged[0]["prompts/total"] == 8
    assert logged[0]["prompts/too_easy"] == 2 and logged[0]["prompts/too_hard"] == 2
    assert {r["prompt"] for r in tables[-1]} <= mid
    # a resumed run reuses the saved choice instead of re-estimating with the trained policy
    assert (tmp_path / "pass_rates.json").exists()
    logged.clear()
    run_grpo(tiny_model, tiny_tokenizer, rows, cfg.model_copy(update={"steps": 3}), tmp_path, seed=0, log=log)
    assert 0 not in logged and sorted(logged) == [3]


def test_token_mean_is_the_step_token_mean_whatever_the_micro_batches():
    """grad_accum must not reweight tokens: a 1-token and a 9-token completion in one micro-batch
    or in two give the same gradient of a token-mean loss."""
    from components.algorithms import aggregate_loss
    from components.training.grpo import optimise

    batch = RolloutBatch.from_sequences([[5], [5]], [[1], [1] * 9], torch.zeros(2), 0, "cpu")
    w = torch.nn.Parameter(torch.zeros(()))

    def loss_fn(mb):
        mask = mb.completion_mask[:, mb.start:]
        return aggregate_loss(w * torch.arange(1.0, mask.shape[1] + 1).expand_as(mask), mask, "token-mean"), {}

    class Stub:
        def step(self, fns, weights):
            for f, wt in zip(fns, weights):
                (f()[0] * wt).backward()
            return {}

    grads = []
    for plan in ([[torch.tensor([0, 1])]], [[torch.tensor([0]), torch.tensor([1])]]):
        w.grad = None
        optimise(Stub(), batch, plan, loss_fn, token_weighted=True)
        grads.append(w.grad.item())
    assert grads[0] == pytest.approx(grads[1])
