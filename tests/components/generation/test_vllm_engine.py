"""The vLLM backend's hand-over of the policy, against a stand-in `vllm` module as strict as the real
one where it matters here: `LLM(model=dir)` reads the directory's config.json and weights, and the
in-process model's `load_weights` refuses a name the model does not have. (vLLM itself needs CUDA;
the GPU check is the README's recipe on a GPU machine.) A LoRA or QLoRA policy must reach vLLM as
a plain model of the base architecture with the adapters added: `save_pretrained` of a peft model
writes adapters only, and its parameter names are peft's.
"""
from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from components.config import LoraConfig
from components.generation.vllm_engine import VLLMEngine
from components.modeling.models import load_model, save_model


class _StrictModel:
    def __init__(self, path: str):
        self.hf = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()

    def load_weights(self, items):
        params = dict(self.hf.state_dict())
        for name, w in items:
            if name not in params:
                raise ValueError(f"There is no module or parameter named {name!r}")
            params[name].copy_(w)


class _LLM:
    def __init__(self, model, tokenizer, **kwargs):
        self.model = _StrictModel(model)
        runner = types.SimpleNamespace(model=self.model)
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))))

    def reset_prefix_cache(self):
        pass


@pytest.fixture()
def fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_LLM))


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_the_policy_reaches_vllm_as_a_plain_model_at_start_and_after_each_update(mode, fake_vllm, model, tok,
                                                                                  tmp_path, monkeypatch):
    save_model(copy.deepcopy(model), tok, tmp_path / "base")
    policy = load_model(str(tmp_path / "base"), finetune=mode, lora=LoraConfig(r=4, alpha=8), seed=0)
    ids = torch.tensor([[1, 5, 6, 7, 8]])

    def move():  # a training step's worth of change (LoRA's B starts at zero)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if p.requires_grad and (mode == "full" or "lora_B" in name):
                    p.add_(torch.randn_like(p) * 0.1)

    def gap() -> float:
        with torch.no_grad():
            return (engine.llm.model.hf(input_ids=ids).logits - policy(input_ids=ids).logits.float()).abs().max().item()

    policy.eval()
    move()
    with monkeypatch.context() as m:  # the engine refuses to start without CUDA
        m.setattr(torch.cuda, "is_available", lambda: True)
        engine = VLLMEngine(policy, tok, model_path=str(tmp_path / "vllm"))
    assert gap() < 1e-4, "vLLM starts from the policy's weights"
    move()
    assert gap() > 1e-3, "the policy moved"
    engine.update_weights(policy)
    assert gap() < 1e-4, "update_weights hands vLLM the moved weights"
