"""Mixed precision (`model.mixed_precision: bf16`): bf16 matmuls, float32 weights, rollouts untouched."""
import pytest
import torch

from components.config import ModelConfig, TrainConfig
from components.generation import SamplingParams, make_engine
from components.training import precision
from components.training.precision import mixed_precision, native_bf16
from components.training.sft import collate, encode, run_sft, sft_loss_fn

ROWS = [{"messages": [{"role": "user", "content": f"{a}+{b}"},
                      {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"}]}
        for a in range(6) for b in range(6)]


def _batch(tok):
    return collate([encode(tok, row, 64) for row in ROWS[:16]], tok.pad_token_id)


def test_bf16_runs_the_matmuls_in_bfloat16_and_keeps_float32_weights_and_grads(tiny_model, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    seen = []
    hook = tiny_model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss32 = sft_loss_fn(tiny_model, batch)[0].detach()
    with mixed_precision("bf16", "cpu"):
        loss16, _ = sft_loss_fn(tiny_model, batch)
        loss16.backward()
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert loss16.dtype == torch.float32  # the loss is computed in float32 from the bf16 logits
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in tiny_model.parameters())
    # the same loss up to bfloat16 rounding (8 bits of mantissa), not another computation
    loss16 = loss16.detach()
    assert float(loss16) == pytest.approx(float(loss32), rel=2e-2)
    assert float(loss16) != float(loss32)


def test_bf16_training_learns_like_float32(tiny_tokenizer, tmp_path):
    from components.config import ArchConfig
    from components.modeling.models import build_tiny_llama

    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=64,
                      max_position_embeddings=128)
    cfg = TrainConfig(steps=60, batch_size=12, lr=1e-2, ckpt_every=100, log_every=100)
    final = {}
    for mode in ("no", "bf16"):
        model = build_tiny_llama(arch, tiny_tokenizer, seed=0)
        with mixed_precision(mode, "cpu"):
            start = float(sft_loss_fn(model, _batch(tiny_tokenizer))[0])
            run_sft(model, tiny_tokenizer, ROWS, cfg, tmp_path / mode, seed=0)
        final[mode] = float(sft_loss_fn(model, _batch(tiny_tokenizer))[0])  # both scored in float32
    assert final["no"] < 0.5 * start, final
    assert final["bf16"] == pytest.approx(final["no"], rel=0.1)


def test_rollouts_decode_in_the_model_dtype_inside_a_bf16_stage(tiny_model, tiny_tokenizer):
    engine = make_engine("transformers", tiny_model, tiny_tokenizer, batch_size=8)
    prompts = [tiny_tokenizer.apply_chat_template([{"role": "user", "content": "2+3"}], tokenize=False,
                                                  add_generation_prompt=True)] * 2
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=7)
    plain = engine.generate(prompts, params)
    with mixed_precision("bf16", "cpu"):
        inside = engine.generate(prompts, params)
    assert inside.completion_ids == plain.completion_ids
    assert inside.logprobs == plain.logprobs


def test_the_recipe_field_is_checked():
    assert ModelConfig().mixed_precision == "no"
    with pytest.raises(ValueError, match="must then be float32"):
        ModelConfig(mixed_precision="bf16", dtype="bfloat16")
    with pytest.raises(ValueError):
        ModelConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="not one of"):
        with mixed_precision("fp16"):
            pass


def test_half_precision_weights_are_refused_or_warned_before_training(tiny_model, tmp_path):
    """AdamW on float16 weights (no loss scaling) turns them inf/NaN within a step or two: refused.
    On bfloat16 weights, steps below their resolution round away: a warning names the fix."""
    import copy

    from components.training.loop import Trainer

    cfg = TrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match="float16 cannot take AdamW steps.*mixed_precision bf16"):
        Trainer({"model": copy.deepcopy(tiny_model).to(torch.float16)}, cfg, tmp_path / "a", what="sft")
    with pytest.warns(UserWarning, match="trainable weights in bfloat16"):
        Trainer({"model": copy.deepcopy(tiny_model).to(torch.bfloat16)}, cfg, tmp_path / "b", what="sft")


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set torch.cpu's AVX512-BF16 and AMX flags; native_bf16's cache is cleared around the test."""
    def set_flags(avx512_bf16: bool, amx: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        native_bf16.cache_clear()
    yield set_flags
    native_bf16.cache_clear()


def test_bfloat16_matmuls_are_native_on_cuda_and_on_cpus_with_avx512_bf16_or_amx(cpu_flags):
    cpu_flags(avx512_bf16=False, amx=False)
    assert not native_bf16("cpu") and native_bf16("cuda") and not native_bf16("mps")
    cpu_flags(avx512_bf16=True, amx=False)
    assert native_bf16("cpu")
    cpu_flags(avx512_bf16=False, amx=True)
    assert native_bf16("cpu")


def test_bf16_on_a_cpu_that_emulates_it_warns_and_names_the_fix(monkeypatch):
    import warnings

    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    with pytest.warns(UserWarning, match="cpu without native bfloat16 matmuls.*use mixed_precision no"):
        with mixed_precision("bf16", "cpu"):
            pass
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mixed_precision("bf16", "cpu"):
            pass
        with mixed_precision("no", "cpu"):
            pass
