import pytest
import torch

from components.config import LoraConfig, TrainConfig
from components.modeling.models import ModelLoadError, load_model, load_tokenizer, save_model
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
