"""Distillation: the mixed loss by hand, KD that closes the gap to the teacher, verified-only
teacher samples, vocabulary checks, kill-and-resume, the saved student, and parameter counts."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from components.config import ArchConfig, RejectionConfig
from tests.conftest import temporary_rewards
from components.data.prompts import render_prompt
from components.modeling.models import save_model
from components.modeling.student import (
    build_student, check_student_size, check_vocab_match, llama_parameter_count, parameter_count, student_model)
from components.training.distill import (
    DistillConfig, distill_batch_loss, heldout_divergence, run_distill, teacher_samples)
from components.seeds import derive_seed
from components.training.sft import collate, encode, pack
from tests.components.training.test_rejection import FakeEngine, good

STUDENT = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=64)


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{a}+{b}"},
                         {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"}]}


TRAIN = [chat(a, b) for a in range(6) for b in range(6)]
HELDOUT = [chat(a, b) for a in range(6, 9) for b in range(3)]


@pytest.fixture()
def teacher(tiny_model):
    """The tiny Llama with a sharpened output (final-norm gain 30): peaked, input-dependent
    next-token distributions, so there is something to distil."""
    with torch.no_grad():
        tiny_model.model.norm.weight.mul_(30.0)
    return tiny_model


@pytest.fixture()
def student(teacher, tiny_tokenizer):
    return build_student(teacher.config, STUDENT, tiny_tokenizer, seed=1)


def cfg(**kw) -> DistillConfig:
    base = dict(steps=6, batch_size=6, lr=1e-2, warmup_steps=0, ckpt_every=2, log_every=1, max_length=64)
    return DistillConfig(**{**base, **kw})


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


# --------------------------------------------------------------------------- the objective


def test_mixed_loss_is_the_weighted_sum_of_its_parts_by_hand(teacher, student, tiny_tokenizer, single_thread):
    c = cfg(sft_weight=0.7, kd_weight=0.3, divergence="jsd", beta=0.3, kd_temperature=2.0)
    batch = collate([encode(tiny_tokenizer, r, 64) for r in (TRAIN[3], TRAIN[17])],
                    tiny_tokenizer.pad_token_id)
    loss, parts = distill_batch_loss(student, teacher, batch, c)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    nll, jsd, n = 0.0, 0.0, 0
    for b in range(2):
        for pos in range(batch["input_ids"].shape[1] - 1):
            if not batch["loss_mask"][b, pos + 1]:
                continue
            y = int(batch["input_ids"][b, pos + 1])
            nll -= float(s[b, pos, y] - torch.logsumexp(s[b, pos], 0))
            p = torch.softmax(t[b, pos] / 2.0, 0).tolist()
            q = torch.softmax(s[b, pos] / 2.0, 0).tolist()
            m = [0.3 * pi + 0.7 * qi for pi, qi in zip(p, q)]
            jsd += 0.3 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m)) + \
                0.7 * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m))
            n += 1
    assert n == int(batch["loss_mask"][:, 1:].sum()) == parts["tokens"] > 10
    assert float(parts["nll"]) == pytest.approx(nll / n, rel=1e-5)
    assert float(parts["kd"]) == pytest.approx(jsd / n, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(0.7 * nll / n + 0.3 * jsd / n, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher gets no gradient"
    assert all(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("divergence", ["forward-kl", "jsd"])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(divergence, teacher, student, tiny_tokenizer,
                                                                     single_thread):
    """Packing puts several sequences in a row, each seeing only itself (position_ids restart), for
    the student and the teacher alike: the NLL, the divergence and the student's gradients are
    those of one padded row per sequence."""
    examples = [encode(tiny_tokenizer, r, 64) for r in (TRAIN[3], TRAIN[17], TRAIN[30], HELDOUT[2], TRAIN[8])]
    c = cfg(sft_weight=0.6, kd_weight=0.4, divergence=divergence)

    def loss_and_grads(batch):
        student.zero_grad()
        loss, parts = distill_batch_loss(student, teacher, batch, c)
        loss.backward()
        return parts, [p.grad.clone() for p in student.parameters()]

    packed_batch = pack(examples, 64, tiny_tokenizer.pad_token_id)
    assert packed_batch["input_ids"].shape[0] < len(examples), "several sequences share a row"
    (padded, g_padded), (packed, g_packed) = (loss_and_grads(b) for b in (
        collate(examples, tiny_tokenizer.pad_token_id), packed_batch))
    assert packed["tokens"] == padded["tokens"]
    for part in ("nll", "kd"):
        assert float(packed[part]) == pytest.approx(float(padded[part]), rel=1e-5), part
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_padded, g_packed))


def test_training_batches_are_packed_only_under_token_mean(teacher, student, tiny_tokenizer, tmp_path, monkeypatch):
    import components.training.distill as distill

    seen = []
    real = distill.distill_batch_loss
    monkeypatch.setattr(distill, "distill_batch_loss", lambda s, t, b, c: seen.append(set(b)) or real(s, t, b, c))
    for agg, pack_on in (("token-mean", True), ("seq-mean-token-mean", True), ("token-mean", False)):
        seen.clear()
        run_distill(student, teacher, tiny_tokenizer, TRAIN, cfg(steps=1, loss_agg=agg, pack=pack_on),
                    tmp_path / f"{agg}-{pack_on}", seed=0)
        assert ("position_ids" in seen[0]) == (agg == "token-mean" and pack_on), (agg, pack_on)


def test_pure_sft_never_runs_the_teacher(student, tiny_tokenizer):
    class NoTeacher(torch.nn.Module):
        def forward(self, **_):
            raise AssertionError("teacher called with kd_weight=0")

    batch = collate([encode(tiny_tokenizer, TRAIN[0], 64)], tiny_tokenizer.pad_token_id)
    loss, parts = distill_batch_loss(student, NoTeacher(), batch, cfg(kd_weight=0.0))
    assert set(parts) == {"nll", "tokens"} and float(loss.detach()) == pytest.approx(float(parts["nll"]))


def test_token_level_kd_closes_the_gap_on_heldout_sequences(teacher, student, tiny_tokenizer, tmp_path,
                                                            single_thread):
    c = cfg(steps=40, sft_weight=0.0, kd_weight=1.0, lr=1e-2, ckpt_every=100, log_every=100)
    before = heldout_divergence(student, teacher, tiny_tokenizer, HELDOUT, c)
    before_teacher = weights(teacher)
    run_distill(student, teacher, tiny_tokenizer, TRAIN, c, tmp_path / "ckpt", seed=0)
    after = heldout_divergence(student, teacher, tiny_tokenizer, HELDOUT, c)
    assert after < 0.5 * before, (before, after)
    assert all(torch.equal(v, weights(teacher)[k]) for k, v in before_teacher.items()), "teacher frozen"


# --------------------------------------------------------------------------- sequence level


def test_only_verified_teacher_samples_are_kept(teacher, tiny_tokenizer):
    engine = FakeEngine({
        "2+2": [(good(4, "a"), 5, "eos"), (good(5), 5, "eos"), ("<answer>4</answer>", 3, "eos")],
        "2*3": [(good(7), 5, "eos"), (good(6), 5, "length"), (good(6, "z"), 5, "eos")],
    })
    rows = [{"prompt": "2+2", "answer": "4", "level": 1}, {"prompt": "2*3", "answer": "6", "level": 2}]
    c = cfg(samples=RejectionConfig(samples_per_prompt=3, keep_per_prompt=2, temperature=0.8, max_new_tokens=16))
    kept, stats = teacher_samples(teacher, tiny_tokenizer, rows, c, seed=5, engine=engine)
    assert [(r["prompt"], r["level"], r["messages"][-1]["content"]) for r in kept] == [
        ("2+2", 1, good(4, "a")), ("2*3", 2, good(6, "z"))]
    (prompts, params, _), = engine.calls
    assert prompts == [render_prompt(tiny_tokenizer, r["prompt"]) for r in rows]
    assert (params.n, params.temperature, params.max_new_tokens) == (3, 0.8, 16)
    assert params.seed == derive_seed(derive_seed(5, "distill"), "rejection_sampling")
    assert (stats.generated, stats.correct, stats.kept) == (6, 4, 2)

    wrong = FakeEngine({"2+2": [(good(3), 5, "eos")] * 3, "2*3": [(good(5), 5, "eos")] * 3})
    with pytest.raises(ValueError, match="no verified sample for 2 prompts.*6 generated, 0 correct"):
        teacher_samples(teacher, tiny_tokenizer, rows, c, seed=5, engine=wrong)


# --------------------------------------------------------------------------- vocabularies


def test_vocabulary_mismatch_fails_clearly(teacher, tiny_tokenizer, tmp_path):
    from components.data.curate import chat_text
    from components.modeling.tokenizer import train_tokenizer

    other_tok = train_tokenizer([chat_text("1+2", "<think>1+2=3</think><answer>3</answer>")] * 5, vocab_size=40)
    narrow = build_student(teacher.config.__class__(**{**teacher.config.to_dict(), "vocab_size": 50}),
                           STUDENT, other_tok, seed=0)
    with pytest.raises(ValueError, match=f"teacher predicts {len(tiny_tokenizer)} tokens, the student 50"):
        run_distill(narrow, teacher, tiny_tokenizer, TRAIN, cfg(), tmp_path / "a", seed=0)
    same_width = build_student(teacher, STUDENT, tiny_tokenizer, seed=0)
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_vocab_match(teacher, same_width, tiny_tokenizer, other_tok)
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the teacher's vocabulary holds 50"):
        build_student(narrow.config, STUDENT, tiny_tokenizer, seed=0)


# --------------------------------------------------------------------------- resume and export


def test_killed_run_resumes_to_the_same_weights(teacher, student, tiny_tokenizer, tmp_path, single_thread):
    c = cfg(steps=6, grad_accum=2, batch_size=4, warmup_steps=2, ckpt_every=2, divergence="reverse-kl")
    straight = copy.deepcopy(student)
    run_distill(straight, teacher, tiny_tokenizer, TRAIN, c, tmp_path / "a", seed=3)
    first = copy.deepcopy(student)
    assert run_distill(first, teacher, tiny_tokenizer, TRAIN, c, tmp_path / "b", seed=3, stop_after=3).resumed_from == 0
    torch.manual_seed(999)
    restarted, logged = copy.deepcopy(student), []
    second = run_distill(restarted, teacher, tiny_tokenizer, TRAIN, c, tmp_path / "b", seed=3,
                         log=lambda m, s: logged.append((s, sorted(m))))
    assert second.resumed_from == 3 and [s for s, _ in logged] == [4, 5, 6]
    assert {"kd", "nll", "loss", "tokens", "grad_norm", "lr"} <= set(logged[0][1])
    expected, got = weights(straight), weights(restarted)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not all(torch.equal(expected[k], weights(student)[k]) for k in expected), "training moved weights"


def test_student_is_a_plain_hf_directory(teacher, student, tiny_tokenizer, tmp_path, single_thread):
    from transformers import AutoModelForCausalLM

    run_distill(student, teacher, tiny_tokenizer, TRAIN, cfg(steps=2), tmp_path / "ckpt", seed=0)
    save_model(student, tiny_tokenizer, tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").exists()
    assert not list((tmp_path / "student").glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    prompt = tiny_tokenizer(render_prompt(tiny_tokenizer, "3+4"), return_tensors="pt", add_special_tokens=False)
    student.eval()
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    assert torch.equal(student.generate(**prompt, **kw), loaded.generate(**prompt, **kw))
    # a pretrained student directory is accepted as the student, checked against the teacher
    again = student_model(teacher, tiny_tokenizer, student_dir=str(tmp_path / "student"),
                          student_tokenizer=tiny_tokenizer)
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(loaded).items())


# --------------------------------------------------------------------------- sizes and config


def test_parameter_counts_by_formula_and_by_module(teacher, student):
    t, s = teacher.config, student.config
    assert parameter_count(teacher) == llama_parameter_count(t.vocab_size, 32, 2, 64, 2)
    assert parameter_count(student) == llama_parameter_count(s.vocab_size, 16, 1, 32, 2)
    # by hand: V=10, d=4, 1 layer, f=8, 2 heads: embed 40 + (2*16 + 2*4*4 + 3*4*8 + 8) + 4
    assert llama_parameter_count(10, 4, 1, 8, 2) == 40 + (32 + 32 + 96 + 8) + 4
    assert llama_parameter_count(10, 4, 1, 8, 2, num_kv_heads=1, tied=False) == 40 + 40 + (32 + 16 + 96 + 8) + 4
    # the default recipe's teacher (d=128, 4 layers, f=512) and the proposed student (d=96, 3 layers, f=256)
    teacher_n, student_n = llama_parameter_count(96, 128, 4, 512, 4), llama_parameter_count(96, 96, 3, 256, 4)
    assert (teacher_n, student_n) == (1_062_016, 341_664)
    assert check_student_size(student_n, teacher_n) == pytest.approx(341_664 / 1_062_016)
    with pytest.raises(ValueError, match="student too large: 268,864 parameters = 0.253"):
        check_student_size(llama_parameter_count(96, 64, 4, 256, 4), teacher_n, max_fraction=0.25)


def test_config_rejects_unknown_names_and_a_loss_of_nothing():
    with pytest.raises(ValidationError, match="unknown distillation loss 'kl'"):
        DistillConfig(divergence="kl")
    with pytest.raises(ValidationError, match="loss aggregation"):
        DistillConfig(loss_agg="mean")
    with pytest.raises(ValidationError, match="both 0"):
        DistillConfig(sft_weight=0, kd_weight=0)
    with pytest.raises(ValidationError, match="beta"):
        DistillConfig(beta=1.0)
    with pytest.raises(ValueError, match="student_dir .* or arch"):
        student_model(None, None)


def test_teacher_samples_from_the_real_engine_train_the_student(teacher, student, tiny_tokenizer, tmp_path,
                                                               single_thread):
    rows = [{"prompt": p, "answer": "0"} for p in ("1+2", "3*4", "5-6", "7+8")]
    with temporary_rewards(test_distill_accept_all=lambda completions, **_: [1.0] * len(completions)):
        samples = RejectionConfig(samples_per_prompt=4, keep_per_prompt=2, temperature=4.0, max_new_tokens=24,
                                  min_tokens=0, max_tokens=24, verifier="test_distill_accept_all", require_format=False)
        c = cfg(steps=2, samples=samples)  # a custom verifier is registered before a config names it
        kept, stats = teacher_samples(teacher, tiny_tokenizer, rows, c, seed=0)
        again, _ = teacher_samples(teacher, tiny_tokenizer, rows, c, seed=0)
    assert kept == again and 0 < stats.kept == len(kept) <= 8, "seeded, at most k per prompt"
    before = weights(student)
    run_distill(student, teacher, tiny_tokenizer, kept, c, tmp_path / "ckpt", seed=0)
    assert not all(torch.equal(v, weights(student)[k]) for k, v in before.items())


def test_student_from_a_teacher_directory_equals_one_from_its_config(teacher, tiny_tokenizer, tmp_path):
    save_model(teacher, tiny_tokenizer, tmp_path / "teacher")
    from_dir = build_student(str(tmp_path / "teacher"), STUDENT, tiny_tokenizer, seed=4)
    from_config = build_student(teacher.config, STUDENT, tiny_tokenizer, seed=4)
    assert from_dir.config.to_dict() == from_config.config.to_dict()
    assert all(torch.equal(v, weights(from_config)[k]) for k, v in weights(from_dir).items())
    c = from_dir.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.eos_token_id) == (
        teacher.config.vocab_size, 16, 1, 32, tiny_tokenizer.eos_token_id)
