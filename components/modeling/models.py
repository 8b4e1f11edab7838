"""Build, load, adapt (LoRA / QLoRA) and save causal language models.

Any local directory or Hugging Face hub id loads through the same `load_model`; weights are
read from safetensors only and `trust_remote_code` is off unless the recipe turns it on.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """The device models are trained on: the first GPU when there is one, else the CPU."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


class ModelLoadError(ValueError):
    """The model named by the recipe cannot be loaded."""


def build_tiny_llama(arch, tokenizer, seed: int):
    """A freshly initialised Llama of shape `arch` (an ArchConfig) for `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads, max_position_embeddings=arch.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(default_device())


def _check_exists(name_or_path: str) -> None:
    """Fail early on a local path that does not exist (anything else may be a hub id)."""
    if Path(name_or_path).expanduser().exists():
        return
    if name_or_path.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name_or_path):
        raise ModelLoadError(f"model.name_or_path: {name_or_path!r} is not a directory nor a hub id")


def load_tokenizer(name_or_path: str, *, revision=None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_exists(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load a tokenizer from {name_or_path!r}: {e}") from None
    if tok.pad_token is None:  # many base models ship without one; EOS is the usual stand-in
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, *, finetune: str = "full", lora=None, dtype: str = "float32",
               revision=None, trust_remote_code: bool = False, seed: int = 0, gradient_checkpointing: bool = False):
    """Load a causal LM for training in `finetune` mode: "full", "lora" or "qlora" (4-bit NF4 + LoRA).
    New adapters are initialised from `seed` (see `add_lora`). `gradient_checkpointing` recomputes
    the layers' activations in training-mode backwards (non-reentrant: no input-grad hook needed)."""
    from transformers import AutoModelForCausalLM

    _check_exists(name_or_path)
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True,
                  dtype=DTYPES[dtype], device_map={"": default_device()})
    if finetune == "qlora":
        kwargs["quantization_config"] = _nf4_config(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load a model from {name_or_path!r}: {e}") from None
    if finetune in ("lora", "qlora"):
        model = add_lora(model, lora, quantized=finetune == "qlora", seed=seed)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def _nf4_config(dtype: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=DTYPES[dtype])


def add_lora(model, lora, quantized: bool = False, seed: int = 0, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with LoRA adapters (peft); for QLoRA also make the 4-bit layers train-safe.

    The adapters' random init (lora_A) is drawn from `seed` on a forked RNG: a function of the
    seed alone, not of whatever ran before in this process. Without it, a run resumed in a new
    process from a checkpoint of another (killed) one trains from different adapters than an
    uninterrupted run, and two identical runs differ.
    `task_type` is peft's: CAUSAL_LM for a policy, SEQ_CLS / TOKEN_CLS for a reward model
    (peft then also trains and saves the new ``score`` head in full).
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type=task_type)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = get_peft_model(model, config)
    if quantized:
        disable_bnb_cpu_repack(model)
    return model


def disable_bnb_cpu_repack(model) -> int:
    """Avoid bitsandbytes' silent CPU gradient trap (see shared/ENVIRONMENT.md).

    On CPUs with AVX512-BF16, an eval-mode forward of a `Linear4bit` repacks its weight in
    place and later training forwards run a kernel without autograd: every gradient through
    the frozen 4-bit layers becomes None. Turning the fast path off keeps gradients flowing.
    Returns the number of layers patched.
    """
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def save_model(model, tokenizer, out_dir: str | Path, *, base_path: str | None = None, merge: bool = True,
               dtype: str = "float32", revision=None, trust_remote_code: bool = False):
    """Save a plain HF model directory (safetensors) at `out_dir`; returns the saved model.

    A peft model is merged into its base first when `merge` is true; a 4-bit (QLoRA) base is
    re-loaded in `dtype` from `base_path` so the merged weights are full precision.
    """
    out_dir = Path(out_dir)
    if hasattr(model, "peft_config") and merge:
        model = merge_adapters(model, base_path, dtype, revision=revision, trust_remote_code=trust_remote_code)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return model


def merge_adapters(peft_model, base_path: str | None, dtype: str = "float32", *, revision=None,
                   trust_remote_code: bool = False):
    """Return a plain model with the LoRA adapters of `peft_model` merged in."""
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not getattr(peft_model, "is_loaded_in_4bit", False) and not _is_quantized(peft_model):
        return peft_model.merge_and_unload()
    if base_path is None:
        raise ValueError("merging QLoRA adapters needs the full-precision base model path")
    with tempfile.TemporaryDirectory() as adapters:
        peft_model.save_pretrained(adapters)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=DTYPES[dtype], use_safetensors=True,
                                                    revision=revision, trust_remote_code=trust_remote_code)
        return PeftModel.from_pretrained(base, adapters).merge_and_unload()


def plain_config(model):
    """The config `plain_state_dict`'s weights load into: a peft model's base config, without its 4-bit
    quantization (a copy; `model` is untouched)."""
    import copy

    config = copy.deepcopy(model.get_base_model().config if hasattr(model, "peft_config") else model.config)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights under the names a plain HF checkpoint of the base architecture uses: LoRA deltas
    added, 4-bit layers dequantized. `model` is left untouched (no merge/unmerge round trip, which
    would re-quantize 4-bit weights or drift bf16 ones). What rollout engines load (vLLM, helpers)."""
    if not hasattr(model, "peft_config") and not getattr(model, "is_loaded_in_4bit", False):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "peft_config") else model
    lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if any(part.startswith("lora_") for part in name.split(".")):
                continue  # the adapters themselves
            owner = name.removesuffix(".base_layer")
            for pname, p in module.named_parameters(recurse=False):
                w = p
                if getattr(p, "quant_state", None) is not None:  # bnb Params4bit
                    import bitsandbytes.functional as bnbf

                    w = bnbf.dequantize_4bit(p.data, p.quant_state)
                w = w.detach()
                layer = lora.get(owner)
                if pname == "weight" and layer is not None:
                    delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
                    w = (w.float() + delta).to(w.dtype)
                out[f"{owner}.{pname}" if owner else pname] = w
    return out


def _is_quantized(model) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
