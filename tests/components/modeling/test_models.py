import pytest
import torch

from components.config import LoraConfig, TrainConfig
from components.modeling.models import ModelLoadError, load_model, load_tokenizer, plain_state_dict, save_model
from components.training.sft import run_sft

ROWS = [{"messages": [{"role": "user", "content": f"{a}+{b}"},
                      {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"}]}
        for a in range(6) for b in range(6)]
LORA = LoraConfig(r=4, alpha=8)


@pytest.fixture()
def saved_base(tmp_path, tiny_model, tiny_tokenizer):
    save_model(tiny_model, tiny_tokenizer, tmp_path / "base")
    return str(tmp_path / "base")


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_adapters_train_after_an_evaluation_pass(mode, saved_base, tiny_tokenizer, tmp_path):
    """The bitsandbytes CPU trap: an eval forward must not silently kill LoRA gradients."""
    model = load_model(saved_base, finetune=mode, lora=LORA)
    before = lora_weights(model)
    model.eval()
    with torch.no_grad():  # an evaluation pass between training steps
        model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-2, ckpt_every=10, log_every=1)
    run_sft(model, tiny_tokenizer, ROWS, cfg, tmp_path / "ckpt", seed=0)
    after = lora_weights(model)
    assert before and all(not torch.equal(before[n], after[n]) for n in before), "every LoRA B matrix moved"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen, "base weights stay frozen"


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_adapters_merge_into_a_plain_safetensors_model(mode, saved_base, tiny_tokenizer, tmp_path):
    model = load_model(saved_base, finetune=mode, lora=LORA)
    run_sft(model, tiny_tokenizer, ROWS, TrainConfig(steps=2, batch_size=8, lr=1e-2), tmp_path / "ckpt", seed=0)
    save_model(model, tiny_tokenizer, tmp_path / "merged", base_path=saved_base)
    files = sorted(p.name for p in (tmp_path / "merged").iterdir())
    assert "model.safetensors" in files and not any("adapter" in f for f in files)
    merged = load_model(str(tmp_path / "merged"))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, merged(input_ids=ids).logits
    # QLoRA trains against 4-bit weights; the merge is full precision, so allow quantisation error.
    assert torch.allclose(expected, got, atol=1e-4 if mode == "lora" else 0.5)


def test_missing_model_paths_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="model.name_or_path: '/nonexistent/model' is not a directory"):
        load_model("/nonexistent/model")
    with pytest.raises(ModelLoadError, match="model.name_or_path: cannot load a model from 'no-such-model'"):
        load_model("no-such-model")  # hub id, but the hub is offline in tests
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


def test_lora_init_is_a_function_of_the_seed_alone(tiny_model, single_thread):
    """A resumed run in a new process must start from the adapters an uninterrupted run had."""
    import copy

    import torch

    from components.modeling.models import add_lora

    def adapters(seed: int, noise: int) -> dict:
        torch.manual_seed(noise)  # whatever ran before in this process
        torch.rand(noise + 1)
        model = add_lora(copy.deepcopy(tiny_model), LORA, seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    state = torch.get_rng_state()
    a, b, c = adapters(0, noise=1), adapters(0, noise=7), adapters(1, noise=1)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    torch.set_rng_state(state)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    add_lora(copy.deepcopy(tiny_model), LORA, seed=5)
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG stream is left as it was"


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_a_peft_policy_hands_engines_plain_weights_that_compute_its_logits(mode, saved_base):
    """What vLLM and the helper processes load: the base's own names, adapters added, 4-bit dequantized."""
    model = load_model(saved_base, finetune=mode, lora=LORA, seed=0)
    with torch.no_grad():  # adapters that change the logits (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    state = plain_state_dict(model)
    plain = load_model(saved_base)
    assert set(state) == set(plain.state_dict()), "the plain checkpoint's names, no lora_/base_layer ones"
    plain.load_state_dict(state)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits.float(),
                                   atol=1e-5, rtol=1e-5)
    assert hasattr(model, "peft_config") and any("lora_B" in n for n, _ in model.named_parameters()), "untouched"


def test_qlora_adapters_merge_into_the_pinned_revision_of_the_base(saved_base, tiny_tokenizer, tmp_path, monkeypatch):
    """The merge reloads the full-precision base: at the recipe's model.revision, not the hub's main."""
    import transformers

    model = load_model(saved_base, finetune="qlora", lora=LORA)
    loads, real = [], transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: loads.append(kw) or real(path, **kw))
    save_model(model, tiny_tokenizer, tmp_path / "merged", base_path=saved_base, revision="abc123")
    assert loads and loads[-1]["revision"] == "abc123" and loads[-1]["trust_remote_code"] is False


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients_and_leaves_sampling_alone(mode, saved_base):
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])

    calls = []

    def grads(model):
        mlp = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
        forward = mlp.forward
        mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # (recomputes skip forward hooks)
        calls.clear()
        model.train()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        del mlp.forward
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)

    plain = load_model(saved_base, finetune=mode, lora=LORA, seed=0)
    ckpt = load_model(saved_base, finetune=mode, lora=LORA, seed=0, gradient_checkpointing=True)
    assert ckpt.is_activation_checkpointing and not plain.is_activation_checkpointing
    (want, once), (got, twice) = grads(plain), grads(ckpt)
    assert (once, twice) == (1, 2), "the checkpointed layer runs again in the backward"
    assert want.keys() == got.keys() and all(torch.allclose(want[n], got[n], atol=1e-6) for n in want)
    ckpt.eval()
    with torch.no_grad():  # decoding keeps its KV cache
        assert ckpt(input_ids=ids, use_cache=True).past_key_values is not None
