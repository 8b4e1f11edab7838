"""Value models (PPO's critic, OREO's value function): a causal-LM backbone with a scalar
token head, as a plain Hugging Face `AutoModelForTokenClassification` with ``num_labels=1``.

Convention (also written into the saved config as ``r1flow_value_convention``): the value
of a state, i.e. a prompt plus a prefix of the response, is the head's output at the LAST
token of that prefix. In training tensors aligned with input_ids (like log-probs), column p
holds the value of the state in which token p is generated: the head's output at p - 1.
A test-time search scores a partial solution with `prefix_values` (or by reading the head
at the last token itself); the directory loads without r1flow.

A new head starts at zero (V = 0 everywhere; its gradient is not zero), and the head's
dropout is off: dropout on a regression target only adds noise to PPO's value targets.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor

from components.data.prompts import render_prompt
from components.io import atomic_dir
from components.modeling.models import DTYPES
from components.modeling.tokenizer import token_ids
from components.training.rollout_batch import RolloutBatch

VALUE_CONVENTION = "last_token_of_prefix"


def value_model_from(model):
    """A value model with `model`'s backbone weights (a causal LM, full or peft: a peft model
    gives its adapter-free base) and a zero head, on the backbone's device and dtype."""
    from transformers import AutoModelForTokenClassification

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        raise ValueError("critic: cannot copy a quantized backbone; load one from a full-precision "
                         "checkpoint with load_value_model(path)")
    config = _value_config(copy.deepcopy(base.config))
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG stream
        value_model = AutoModelForTokenClassification.from_config(config)
    backbone = getattr(value_model, value_model.base_model_prefix)
    backbone.load_state_dict(_plain_state(getattr(base, base.base_model_prefix)))
    _zero_head(value_model)
    p = next(base.parameters())
    return value_model.to(device=p.device, dtype=p.dtype)


def load_value_model(path: str | Path, dtype: str = "float32", device=None):
    """A value model from a directory: a saved value model, or a causal-LM / reward-model
    checkpoint whose backbone is kept and whose missing head starts at zero."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = _value_config(AutoConfig.from_pretrained(str(path)))
    value_model, info = AutoModelForTokenClassification.from_pretrained(
        str(path), config=config, dtype=DTYPES[dtype], use_safetensors=True, output_loading_info=True)
    if any(k.startswith(("score.", "classifier.")) for k in info["missing_keys"]):
        _zero_head(value_model)
    return value_model.to(device) if device is not None else value_model


def save_value_model(value_model, tokenizer, out_dir: str | Path) -> Path:
    """Save as a plain HF directory (safetensors; LoRA merged), written atomically."""
    if hasattr(value_model, "merge_and_unload"):
        value_model = value_model.merge_and_unload()
    value_model.config.r1flow_value_convention = VALUE_CONVENTION
    with atomic_dir(out_dir) as tmp:
        value_model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def completion_values(value_model, batch: RolloutBatch) -> Tensor:
    """Values of columns ``batch.start:`` (differentiable): column start + j is the head's output
    at position start + j - 1. Shapes: -> [N, L - start] float32."""
    out = value_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return out[:, batch.start - 1 : -1, 0].float()


def batch_values(value_model, batch: RolloutBatch, chunk: int) -> Tensor:
    """No-grad values [N, L] aligned with input_ids (0 off the completion), in chunks of rows."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)
    for rows in torch.argsort(batch.seq_len, stable=True).split(chunk):
        part = batch.select(rows)
        with torch.inference_mode():
            values = completion_values(value_model, part)
        out[rows[:, None], torch.arange(part.start, part.input_ids.shape[1], device=out.device)] = values
    return out.masked_fill_(~batch.completion_mask, 0.0)


def prefix_values(value_model, tokenizer, prompt: str, prefixes: list[str],
                  system_prompt: str | None = None) -> list[float]:
    """V(prompt + prefix) for each partial response text (an empty prefix: the prompt alone)."""
    head = token_ids(tokenizer, [render_prompt(tokenizer, prompt, system_prompt)])[0]
    rows = [head + ids for ids in token_ids(tokenizer, list(prefixes))]
    device = next(value_model.parameters()).device
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    last = torch.tensor([len(r) - 1 for r in rows])
    attention_mask = (torch.arange(width) <= last[:, None]).long()
    with torch.inference_mode():
        out = value_model(input_ids=ids.to(device), attention_mask=attention_mask.to(device), use_cache=False).logits
    return out[torch.arange(len(rows)), last.to(device), 0].float().tolist()


def _value_config(config):
    config.num_labels = 1
    config.classifier_dropout = 0.0
    config.r1flow_value_convention = VALUE_CONVENTION
    return config


def _zero_head(value_model) -> None:
    head = getattr(value_model, "score", None) or getattr(value_model, "classifier")
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()


def _plain_state(backbone) -> dict[str, Tensor]:
    """The backbone's own weights: LoRA factors dropped, peft's ``base_layer`` names unwrapped."""
    return {k.replace(".base_layer.", "."): v for k, v in backbone.state_dict().items()
            if "lora_" not in k and "modules_to_save" not in k}
