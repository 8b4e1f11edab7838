"""Value models: built from a policy (full or peft) with a zero head, saved as a plain HF
directory that transformers loads alone, and read with one convention everywhere: the value
of a state is the head's output at the last token of its prefix."""
from __future__ import annotations

import torch
from transformers import AutoModelForTokenClassification

from components.config import LoraConfig
from components.data.prompts import render_prompt
from components.modeling.models import add_lora
from components.training.alignment.oreo import OREOConfig, encode_trajectories
from components.training.alignment.value_model import (
    VALUE_CONVENTION,
    batch_values,
    completion_values,
    load_value_model,
    prefix_values,
    save_value_model,
    value_model_from,
)

ROW = {"prompt": "1+2*2", "completion": "<think>2*2=4 1+4=5</think><answer>5</answer>", "reward": 1.0}


def trained_like(value_model) -> None:
    """Give the zero head some weights so that values differ between positions."""
    with torch.no_grad():
        value_model.score.weight.normal_(generator=torch.Generator().manual_seed(0))


def test_built_from_a_policy_the_backbone_is_copied_and_the_head_is_zero(tiny_model):
    state = torch.random.get_rng_state()
    value_model = value_model_from(tiny_model)
    assert torch.equal(torch.random.get_rng_state(), state), "building does not move the caller's RNG"
    assert value_model.config.num_labels == 1 and value_model.config.classifier_dropout == 0.0
    assert all(torch.equal(p, tiny_model.model.state_dict()[n]) for n, p in value_model.model.state_dict().items())
    assert all(torch.all(p == 0) for p in value_model.score.parameters())


def test_a_peft_policy_gives_its_base_backbone(tiny_model):
    base_state = {n: p.clone() for n, p in tiny_model.model.state_dict().items()}
    policy = add_lora(tiny_model, LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))
    value_model = value_model_from(policy)
    assert all(torch.equal(p, base_state[n]) for n, p in value_model.model.state_dict().items())


def test_one_convention_in_training_tensors_in_search_and_on_disk(tiny_model, tiny_tokenizer, tmp_path):
    value_model = value_model_from(tiny_model)
    trained_like(value_model)
    batch = encode_trajectories(tiny_tokenizer, [ROW], OREOConfig()).batch(torch.tensor([0]), "cpu")
    aligned = batch_values(value_model, batch, chunk=4)  # column p: V of the state generating token p
    with torch.no_grad():
        assert torch.allclose(aligned[:, batch.start:], completion_values(value_model, batch), atol=1e-6)
    head = value_model(input_ids=batch.input_ids).logits[0, :, 0].detach()
    start = batch.start
    assert torch.allclose(aligned[0, start:], head[start - 1 : -1], atol=1e-6)
    # search: V(prompt) and V(prompt + first step) are the head at each prefix's last token
    step = "<think>2*2=4 "
    n_step = len(tiny_tokenizer(step, add_special_tokens=False)["input_ids"])
    v_prompt, v_step = prefix_values(value_model, tiny_tokenizer, ROW["prompt"], ["", step])
    assert abs(v_prompt - float(aligned[0, start])) < 1e-5
    assert abs(v_step - float(aligned[0, start + n_step])) < 1e-5
    # saved: a plain HF directory that transformers loads alone, and load_value_model keeps the head
    out = save_value_model(value_model, tiny_tokenizer, tmp_path / "value")
    plain = AutoModelForTokenClassification.from_pretrained(out)
    assert plain.config.r1flow_value_convention == VALUE_CONVENTION and plain.config.num_labels == 1
    ids = tiny_tokenizer(render_prompt(tiny_tokenizer, ROW["prompt"]), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        assert abs(float(plain(**ids).logits[0, -1, 0]) - v_prompt) < 1e-5
    assert abs(prefix_values(load_value_model(out), tiny_tokenizer, ROW["prompt"], [""])[0] - v_prompt) < 1e-5


def test_loaded_from_a_causal_lm_checkpoint_the_missing_head_starts_at_zero(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "lm")
    value_model = load_value_model(tmp_path / "lm")
    assert all(torch.all(p == 0) for p in value_model.score.parameters())
    assert torch.equal(value_model.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)
