"""DPO and ORPO on the tiny Llama: each moves its own objective on the training pairs, DPO
resumes to identical weights, and bad pairs fail with the row and column named."""
from __future__ import annotations

import copy

import pytest
import torch

from components.config import LoraConfig
from components.modeling.models import add_lora
from components.training.alignment.dpo import DPOConfig, run_dpo
from components.training.alignment.orpo import ORPOConfig, run_orpo
from components.training.alignment.sequences import (
    encode_pairs,
    encode_rows,
    initial_sequence_logps,
    pair_rows,
    sequence_logps,
)
from tests.components.training.alignment.conftest import collect, pair_rows as make_pairs, same_weights, weights

ROWS = make_pairs(8)


def pair_logps(model, tokenizer, reduce="sum"):
    """(chosen, rejected) response log-probs of every training pair under `model`."""
    batch = encode_pairs(tokenizer, ROWS, 256, None, "test").batch(torch.arange(2 * len(ROWS)), "cpu")
    model.eval()
    with torch.no_grad():
        logps = sequence_logps(model, batch, reduce)
    model.train()
    return logps.chunk(2)


def test_pairs_are_encoded_as_the_chat_template_renders_them(tiny_tokenizer):
    pairs = encode_pairs(tiny_tokenizer, ROWS[:2], 256, None, "test")
    assert len(pairs) == 4 and torch.equal(pair_rows(torch.tensor([1]), 2), torch.tensor([1, 3]))
    batch = pairs.batch(torch.arange(4), "cpu")
    text = tiny_tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert text == "<|user|>1+2<|end|><|assistant|><think>1+2=3</think><answer>3</answer><|end|>"
    response = batch.input_ids[2][batch.completion_mask[2]]
    assert tiny_tokenizer.decode(response) == "<answer>3</answer><|end|>", "rejected rows follow the chosen ones"


def test_reference_logprobs_are_computed_once_in_chunks_and_match_one_forward(tiny_model, tiny_tokenizer):
    pairs = encode_pairs(tiny_tokenizer, ROWS, 256, None, "test")
    one, two = initial_sequence_logps(tiny_model, None, pairs, 16, "cpu"), initial_sequence_logps(
        tiny_model, None, pairs, 3, "cpu")
    chosen, rejected = pair_logps(tiny_model, tiny_tokenizer)
    assert torch.allclose(one, two, atol=1e-5) and torch.allclose(one, torch.cat([chosen, rejected]), atol=1e-4)
    assert tiny_model.training, "the policy is back in training mode"


def test_dpo_raises_the_implicit_reward_margin(tiny_model, tiny_tokenizer, tmp_path):
    reference = copy.deepcopy(tiny_model)
    before = weights(tiny_model)
    logged, log = collect()
    cfg = DPOConfig(steps=10, batch_size=4, lr=1e-2, beta=0.5, ckpt_every=100)
    out = run_dpo(tiny_model, tiny_tokenizer, ROWS, cfg, tmp_path, seed=0, log=log)
    assert not same_weights(before, weights(tiny_model)) and out.updates == 10 and out.tokens_generated == 0
    chosen, rejected = pair_logps(tiny_model, tiny_tokenizer)
    ref_chosen, ref_rejected = pair_logps(reference, tiny_tokenizer)
    margin = cfg.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert (margin > 0).all(), margin  # preference accuracy on the training pairs: 0 -> 1
    assert margin.mean() > 1.0
    assert abs(logged[1]["reward/margin"]) < 1e-3, "policy == reference at the first step"
    assert logged[10]["reward/margin"] > 1.0 and logged[10]["loss"] < logged[1]["loss"]


def test_ipo_works_on_per_token_mean_logprobs(tiny_model, tiny_tokenizer, tmp_path):
    """IPO's target margin 1/(2 beta) is on the scale of one token's log-ratio: its h uses means."""
    from components.algorithms import dpo_loss
    from components.training.alignment.dpo import dpo_micro_loss

    reference = copy.deepcopy(tiny_model)
    cfg = DPOConfig(steps=3, batch_size=4, lr=1e-2, beta=0.5, loss_type="ipo", ckpt_every=100)
    run_dpo(tiny_model, tiny_tokenizer, ROWS, cfg, tmp_path, seed=0)
    pairs = encode_pairs(tiny_tokenizer, ROWS, 256, None, "test")
    batch = pairs.batch(torch.arange(2 * len(ROWS)), "cpu")
    ref_means = torch.cat(pair_logps(reference, tiny_tokenizer, "mean"))
    tiny_model.eval()
    with torch.no_grad():
        loss, _ = dpo_micro_loss(tiny_model, batch, ref_means, cfg.model_copy(update={"nll_weight": 0.0}))
    (chosen, rejected), (rc, rr) = pair_logps(tiny_model, tiny_tokenizer, "mean"), ref_means.chunk(2)
    expected = dpo_loss(chosen, rejected, rc, rr, cfg.beta, 0.0, "ipo")[0].mean()
    assert loss == pytest.approx(expected.item(), abs=1e-5)
    lengths = torch.tensor([len(r) for r in pairs.responses], dtype=torch.float32)
    sums = torch.cat(pair_logps(reference, tiny_tokenizer))
    assert torch.allclose(sums / lengths, ref_means, atol=1e-5), "a row's mean is its sum over its response tokens"


def test_dpo_with_the_chosen_nll_keeps_the_chosen_replies_likelier(tiny_model, tiny_tokenizer, tmp_path):
    # RPO: the same DPO run plus the chosen replies' NLL ends with the chosen replies more likely
    plain, rpo = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    logged, log = collect()
    for model, weight, folder in ((plain, 0.0, "a"), (rpo, 1.0, "b")):
        cfg = DPOConfig(steps=6, batch_size=4, lr=1e-2, beta=0.5, nll_weight=weight, ckpt_every=100)
        run_dpo(model, tiny_tokenizer, ROWS, cfg, tmp_path / folder, seed=0, log=log)
    chosen_plain, _ = pair_logps(plain, tiny_tokenizer, "mean")
    chosen_rpo, _ = pair_logps(rpo, tiny_tokenizer, "mean")
    assert chosen_rpo.mean() > chosen_plain.mean()
    assert logged[6]["nll/chosen"] > 0


def test_dpo_replay_keeps_the_replayed_replies_likely(tiny_model, tiny_tokenizer, tmp_path):
    # PPO-ptx style rehearsal: the replayed rows end likelier than after the same DPO run without them
    replay = [{"prompt": f"{a}*{b}", "completion": f"<think>{a}*{b}={a * b}</think><answer>{a * b}</answer>"}
              for a in range(3, 6) for b in range(3, 6)]
    batch = encode_rows(tiny_tokenizer, replay, "completion", 256, None, "t").batch(torch.arange(len(replay)), "cpu")
    logged, log = collect()
    outcome = {}
    for weight in (0.0, 2.0):
        model = copy.deepcopy(tiny_model)
        cfg = DPOConfig(steps=6, batch_size=4, lr=1e-2, beta=0.5, replay_weight=weight, ckpt_every=100)
        run_dpo(model, tiny_tokenizer, ROWS, cfg, tmp_path / str(weight), seed=0, replay=replay, log=log)
        with torch.no_grad():
            outcome[weight] = sequence_logps(model.eval(), batch, "mean").mean()
    assert outcome[2.0] > outcome[0.0]
    assert logged[6]["nll/replay"] > 0
    with pytest.raises(ValueError, match="replay_weight > 0 needs replay rows"):
        run_dpo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, DPOConfig(steps=1, replay_weight=1.0), tmp_path / "x",
                seed=0)


def test_dpo_resumes_to_the_same_weights(tiny_model, tiny_tokenizer, tmp_path):
    cfg = DPOConfig(steps=4, batch_size=3, grad_accum=2, lr=5e-3, warmup_steps=2, schedule="cosine", ckpt_every=100)
    straight = copy.deepcopy(tiny_model)
    run_dpo(straight, tiny_tokenizer, ROWS, cfg, tmp_path / "a", seed=3)
    first = run_dpo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=3, stop_after=2)
    assert first.resumed_from == 0
    torch.manual_seed(999)
    restarted = copy.deepcopy(tiny_model)  # a new process rebuilds the initial policy (= the reference)
    second = run_dpo(restarted, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=3)
    assert second.resumed_from == 2
    assert same_weights(weights(straight), weights(restarted))


def test_dpo_on_a_peft_policy_uses_the_base_as_reference(tiny_model, tiny_tokenizer, tmp_path):
    policy = add_lora(tiny_model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # adapters that already moved: the reference must still be the base
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    logged, log = collect()
    run_dpo(policy, tiny_tokenizer, ROWS, DPOConfig(steps=1, batch_size=8, lr=1e-3), tmp_path, seed=0, log=log)
    assert abs(logged[1]["reward/margin"]) > 1e-3, "margins are measured against the adapter-free base"


def test_orpo_raises_the_log_odds_ratio_and_lowers_the_chosen_nll(tiny_model, tiny_tokenizer, tmp_path):
    chosen0, rejected0 = pair_logps(tiny_model, tiny_tokenizer, "mean")
    before = weights(tiny_model)
    logged, log = collect()
    run_orpo(tiny_model, tiny_tokenizer, ROWS, ORPOConfig(steps=10, batch_size=4, lr=1e-2, lam=1.0), tmp_path,
             seed=0, log=log)
    assert not same_weights(before, weights(tiny_model))
    chosen1, rejected1 = pair_logps(tiny_model, tiny_tokenizer, "mean")
    from components.algorithms import log_odds

    ratio0 = (log_odds(chosen0) - log_odds(rejected0)).mean()
    ratio1 = (log_odds(chosen1) - log_odds(rejected1)).mean()
    assert ratio1 > ratio0 + 0.3, (ratio0, ratio1)
    assert -chosen1.mean() < -chosen0.mean() - 0.5, "the chosen responses' NLL falls"
    assert logged[10]["log_odds_ratio"] > logged[1]["log_odds_ratio"]


@pytest.mark.parametrize("run, cfg", [(run_dpo, DPOConfig(steps=1)), (run_orpo, ORPOConfig(steps=1))])
def test_bad_pairs_fail_with_the_row_and_column_named(run, cfg, tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        run(tiny_model, tiny_tokenizer, [], cfg, tmp_path, seed=0)
    same = ROWS[:2] + [{"prompt": "1+1", "chosen": "<answer>2</answer>", "rejected": " <answer>2</answer> "}]
    with pytest.raises(ValueError, match="row 2: 'chosen' and 'rejected' are the same response"):
        run(tiny_model, tiny_tokenizer, same, cfg, tmp_path, seed=0)
    with pytest.raises(ValueError, match="row 1: column 'rejected' must be a non-empty string"):
        run(tiny_model, tiny_tokenizer, [ROWS[0], {"prompt": "1+1", "chosen": "2"}], cfg, tmp_path, seed=0)
    late = [{"prompt": "1+2", "chosen": "<think>1+2=3</think><answer>3</answer>",
             "rejected": "<think>1+2=3</think><answer>4</answer>"}]  # 6 prompt tokens, then 4 shared ones
    with pytest.raises(ValueError, match="row 0: 'chosen' and 'rejected' are identical once cut to max_length=10"):
        run(tiny_model, tiny_tokenizer, late, cfg.model_copy(update={"max_length": 10}), tmp_path, seed=0)
    long_prompt = [{"prompt": "1+2+3+4+5", "chosen": "<answer>15</answer>", "rejected": "<answer>14</answer>"}]
    with pytest.raises(ValueError, match="row 0: the prompt alone fills max_length=8"):
        run(tiny_model, tiny_tokenizer, long_prompt, cfg.model_copy(update={"max_length": 8}), tmp_path, seed=0)


def test_dpo_config_checks_its_loss_name():
    with pytest.raises(ValueError, match="unknown DPO loss 'sigmod'.*hinge"):
        DPOConfig(loss_type="sigmod")
