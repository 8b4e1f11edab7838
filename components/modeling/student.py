"""A smaller student for distillation: built from the teacher's config, sized, and vocab-checked.

Distillation (Hinton et al. 2015; DeepSeek-R1 §2.4) needs a student that reads and writes the
same tokens as its teacher: token-level KD compares the two next-token distributions position
by position, and sequence-level KD trains the student on the teacher's token sequences. So the
student takes the teacher's vocabulary size and special tokens, and only its width and depth
(`ArchConfig`) are its own. The student is always a Llama (any teacher architecture can be
distilled into it), with tied input/output embeddings as `build_tiny_llama` makes them.

`parameter_count` counts a module's distinct tensors (tied weights once);
`llama_parameter_count` is the same number computed from the shape alone, so a recipe's
"student <= 1/3 of the teacher" can be checked before anything is built.
"""
from __future__ import annotations

from pathlib import Path

import torch

from components.modeling.models import default_device, load_model


def _teacher_config(teacher):
    """A teacher given as a config, a model (its `.config`) or a directory / hub id."""
    if isinstance(teacher, (str, Path)):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(teacher), trust_remote_code=False)
    return getattr(teacher, "config", teacher)


def build_student(teacher_config_or_dir, arch, tokenizer, seed: int):
    """A freshly initialised Llama of shape `arch` (an ArchConfig) with the teacher's vocabulary.

    `teacher_config_or_dir` is the teacher's `PretrainedConfig`, the teacher model, or its
    directory / hub id. The student's vocabulary size (the width of its logits), maximum
    positions and pad/bos/eos ids come from the teacher and `tokenizer` (the teacher's);
    `arch.vocab_size` and `arch.max_position_embeddings` are not used.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher = _teacher_config(teacher_config_or_dir)
    vocab = _vocab_size(teacher, "teacher")
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary holds {vocab}: "
                         "pass the teacher's own tokenizer")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=getattr(teacher, "max_position_embeddings", None) or arch.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(default_device())


def student_model(teacher, tokenizer, *, student_dir: str | None = None, arch=None, seed: int = 0,
                  student_tokenizer=None, dtype: str = "float32"):
    """The student to distil into: the (pretrained) model at `student_dir`, or a fresh one of `arch`.

    A loaded student must share the teacher's vocabulary (`check_vocab_match`, with the
    tokenizer saved next to it when `student_tokenizer` is given).
    """
    if student_dir is None:
        if arch is None:
            raise ValueError("student: give either student_dir (a pretrained student) or arch (build a fresh one)")
        return build_student(teacher, arch, tokenizer, seed)
    student = load_model(student_dir, dtype=dtype)
    teacher = _teacher_config(teacher) if isinstance(teacher, (str, Path)) else teacher
    check_vocab_match(teacher, student, tokenizer, student_tokenizer)
    return student


# --------------------------------------------------------------------------- vocabulary


def _vocab_size(model_or_config, who: str) -> int:
    """Rows of the output layer (the logits' width); falls back to `config.vocab_size`."""
    head = model_or_config.get_output_embeddings() if hasattr(model_or_config, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = getattr(model_or_config, "config", model_or_config)
    size = getattr(config, "vocab_size", None)
    if size is None:
        raise ValueError(f"{who}: cannot tell the vocabulary size (no output embeddings, no config.vocab_size)")
    return int(size)


def check_vocab_match(teacher, student, teacher_tokenizer=None, student_tokenizer=None) -> int:
    """Raise a ValueError unless teacher and student share a vocabulary; returns its size.

    Compared: the width of the two models' logits, and (when both tokenizers are given) the
    token -> id maps and the pad/eos ids. Distillation across different vocabularies would
    compare unrelated tokens position by position, so it is refused, not approximated.
    """
    t_size, s_size = _vocab_size(teacher, "teacher"), _vocab_size(student, "student")
    if t_size != s_size:
        raise ValueError(f"vocabulary mismatch: the teacher predicts {t_size} tokens, the student {s_size}; "
                         "build the student with the teacher's tokenizer (build_student)")
    if teacher_tokenizer is not None and student_tokenizer is not None:
        t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        if t_vocab != s_vocab:
            diff = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=str)[:3]
            raise ValueError(f"vocabulary mismatch: the teacher's and student's tokenizers differ "
                             f"({len(t_vocab)} vs {len(s_vocab)} tokens; e.g. (token, id) {diff})")
        for attr in ("pad_token_id", "eos_token_id"):
            t_id, s_id = getattr(teacher_tokenizer, attr), getattr(student_tokenizer, attr)
            if t_id != s_id:
                raise ValueError(f"vocabulary mismatch: {attr} is {t_id} for the teacher, {s_id} for the student")
    return t_size


# --------------------------------------------------------------------------- size


def parameter_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tensor tied to two places counts once)."""
    return sum(p.numel() for p in model.parameters())


def llama_parameter_count(vocab_size: int, hidden_size: int, num_layers: int, intermediate_size: int,
                          num_heads: int, num_kv_heads: int | None = None, tied: bool = True) -> int:
    """Parameters of a bias-free Llama, from its shape alone.

    embed V*d (+ V*d for an untied head) + L * (attention 2*d^2 + 2*d*(kv*d/h), MLP 3*d*f,
    two RMSNorms 2*d) + final RMSNorm d.
    """
    kv = num_heads if num_kv_heads is None else num_kv_heads
    kv_width = kv * (hidden_size // num_heads)
    per_layer = 2 * hidden_size**2 + 2 * hidden_size * kv_width + 3 * hidden_size * intermediate_size + 2 * hidden_size
    head = 0 if tied else vocab_size * hidden_size
    return vocab_size * hidden_size + head + num_layers * per_layer + hidden_size


def check_student_size(student_params: int, teacher_params: int, max_fraction: float = 1 / 3) -> float:
    """Raise a ValueError if the student has more than `max_fraction` of the teacher's parameters.

    Returns the ratio student / teacher.
    """
    if teacher_params <= 0 or student_params <= 0:
        raise ValueError(f"parameter counts must be positive, got student {student_params}, teacher {teacher_params}")
    ratio = student_params / teacher_params
    if ratio > max_fraction:
        raise ValueError(f"student too large: {student_params:,} parameters = {ratio:.3f} of the teacher's "
                         f"{teacher_params:,}, above the allowed {max_fraction:.3f}")
    return ratio
