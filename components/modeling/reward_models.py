"""Outcome and process reward models on a causal-LM backbone: build, load, encode, score.

Both kinds are plain Hugging Face classification models with one output, built from a policy's
causal-LM checkpoint (the new ``score`` head is initialised from the seed) and saved as plain
directories that load without r1flow:

* outcome RM (ORM): ``AutoModelForSequenceClassification``. The score of a completion is the
  logit at the last non-pad token of ``render_prompt(tokenizer, prompt) + completion``, tokenized
  as one text without special tokens added (no EOS appended unless the completion contains it).
  This is what the HF model's own forward pools (``config.pad_token_id`` is set), so
  ``model(input_ids).logits[:, 0]`` of that text is the score. When the pad token IS the EOS token,
  HF also treats a trailing EOS as padding; the score is then read before it.
* process RM (PRM): ``AutoModelForTokenClassification``. The score of step i of a completion
  (``components.data.steps.split_steps(completion, sep)``) is sigmoid(logit) at the last token of
  that step: the token whose character span (fast-tokenizer offsets) covers character
  ``step_ends(completion)[i] - 1`` of the completion within the rendered text. Tokenizers whose
  offsets skip some characters (e.g. trimmed whitespace) get the last token starting at or
  before that character, which is the covering token whenever there is one.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from components.config import LoraConfig
from components.data.prompts import render_prompt
from components.data.steps import step_ends
from components.modeling.models import DTYPES, ModelLoadError, _check_exists, add_lora, default_device


@dataclass(frozen=True)
class RewardModelKind:
    auto_class: str                # the transformers auto class that builds and loads it
    task_type: str                 # peft's task type (LoRA then also trains the score head)
    config: dict = field(default_factory=dict)  # config overrides applied when loading


REWARD_MODEL_KINDS: dict[str, RewardModelKind] = {
    "outcome": RewardModelKind("AutoModelForSequenceClassification", "SEQ_CLS"),
    # step labels are few: no dropout (HF's default for Llama is 0.1) on the head's input
    "process": RewardModelKind("AutoModelForTokenClassification", "TOKEN_CLS", {"classifier_dropout": 0.0}),
}


def get_reward_model_kind(kind: str) -> RewardModelKind:
    try:
        return REWARD_MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown reward model kind {kind!r}; valid names: {', '.join(sorted(REWARD_MODEL_KINDS))}"
                         ) from None


def load_reward_model(name_or_path: str, kind: str = "outcome", *, pad_token_id: int | None = None,
                      finetune: str = "full", lora=None, dtype: str = "float32", revision=None,
                      trust_remote_code: bool = False, seed: int = 0):
    """A one-output reward model of `kind` ("outcome" | "process") from a causal-LM or reward-model dir.

    The backbone comes from `name_or_path` (local dir or hub id; safetensors only); a missing
    ``score`` head is initialised under ``torch.manual_seed(seed)``. `pad_token_id` (the
    tokenizer's) is written into the config; without it the checkpoint's own is kept.
    ``finetune="lora"`` wraps the model with LoRA adapters and a fully trainable head.
    """
    import transformers

    spec = get_reward_model_kind(kind)
    if finetune not in ("full", "lora"):
        raise ValueError(f"finetune: reward models train 'full' or 'lora', got {finetune!r}")
    _check_exists(name_or_path)
    auto_class = getattr(transformers, spec.auto_class)
    hub = dict(revision=revision, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, **hub)
        overrides = {"num_labels": 1, **spec.config, **({} if pad_token_id is None else {"pad_token_id": pad_token_id})}
        for key, value in overrides.items():
            setattr(config, key, value)
        with _quiet_load_report():  # the new score head is missing from a causal-LM checkpoint by design
            model = auto_class.from_pretrained(name_or_path, config=config, use_safetensors=True,
                                               dtype=DTYPES[dtype], device_map={"": default_device()}, **hub)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load a reward model ({kind}) from {name_or_path!r}: {e}"
                             ) from None
    if model.config.pad_token_id is None:
        raise ModelLoadError(f"{name_or_path!r}: no pad_token_id in the config; pass the tokenizer's pad_token_id")
    if finetune == "lora":
        model = add_lora(model, lora or LoraConfig(), seed=seed, task_type=spec.task_type)
    return model


@contextlib.contextmanager
def _quiet_load_report():
    """transformers logs a "LOAD REPORT" warning table for every missing weight, and a tensor-parallel
    plan check lists the new head as "not sharded"; a reward model built on a causal LM always
    lacks its new head, so neither says anything a user can act on."""
    logs = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


# --------------------------------------------------------------------------- encoding


def encode_outcome(tokenizer, prompt: str, completion: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of ``render_prompt(prompt) + completion`` (the ORM's input)."""
    text = render_prompt(tokenizer, prompt, system_prompt) + completion
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_steps(tokenizer, prompt: str, completion: str, sep: str = " ",
                 system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered text and the token position of each step's last character."""
    if not getattr(tokenizer, "is_fast", True):
        raise ValueError("tokenizer: step positions need a fast tokenizer (character offsets); load it with use_fast")
    head = render_prompt(tokenizer, prompt, system_prompt)
    enc = tokenizer(head + completion, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in enc["offset_mapping"]]
    positions = [bisect.bisect_right(starts, len(head) + end - 1) - 1 for end in step_ends(completion, sep)]
    return enc["input_ids"], positions


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] input ids right-padded with `pad_id`, and the attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def _device(model) -> torch.device:
    return next(model.parameters()).device


def outcome_logits(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """[N] ORM scores of token sequences (differentiable; the HF forward pools the last non-pad token)."""
    ids, attn = pad_right(seqs, pad_id)
    device = _device(model)
    return model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits[:, 0]


def step_logits(model, seqs: list[list[int]], positions: list[list[int]], pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """PRM logits at step-end positions: ([N, S] float, [N, S] bool mask), differentiable."""
    ids, attn = pad_right(seqs, pad_id)
    width = max(len(p) for p in positions)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, p in enumerate(positions):
        pos[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        mask[i, : len(p)] = True
    device = _device(model)
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[..., 0]  # [N, T]
    return logits.gather(1, pos.to(device)), mask.to(device)


# --------------------------------------------------------------------------- batched scoring


def outcome_scores(model, seqs: list[list[int]], batch_size: int = 64) -> list[float]:
    """ORM scores of encoded sequences (`encode_outcome`), in length-sorted batches, without gradients."""
    pad = model.config.pad_token_id
    return _in_chunks(model, [len(s) for s in seqs], batch_size,
                      lambda chunk: outcome_logits(model, [seqs[i] for i in chunk], pad).float().tolist())


def step_scores(model, seqs: list[list[int]], positions: list[list[int]], batch_size: int = 64) -> list[list[float]]:
    """PRM step probabilities of encoded sequences (`encode_steps`), batched, without gradients.

    A sequence without step positions gets an empty list.
    """
    pad = model.config.pad_token_id

    def score(chunk: list[int]) -> list[list[float]]:
        rows = [i for i in chunk if positions[i]]
        if not rows:
            return [[] for _ in chunk]
        logits, mask = step_logits(model, [seqs[i] for i in rows], [positions[i] for i in rows], pad)
        probs = torch.sigmoid(logits.float())
        by_row = {i: probs[r][mask[r]].tolist() for r, i in enumerate(rows)}
        return [by_row.get(i, []) for i in chunk]

    return _in_chunks(model, [len(s) for s in seqs], batch_size, score)


def score_outcomes(model, tokenizer, prompts: list[str], completions: list[str], *,
                   system_prompt: str | None = None, batch_size: int = 64) -> list[float]:
    """ORM score (a logit) of each (prompt, completion)."""
    _check_pairs(prompts, completions)
    return outcome_scores(model, [encode_outcome(tokenizer, p, c, system_prompt)
                                  for p, c in zip(prompts, completions)], batch_size)


def score_steps(model, tokenizer, prompts: list[str], completions: list[str], *, sep: str = " ",
                system_prompt: str | None = None, batch_size: int = 64) -> list[list[float]]:
    """PRM score (a probability) of every step of each (prompt, completion); [] for an empty completion."""
    _check_pairs(prompts, completions)
    encoded = [encode_steps(tokenizer, p, c, sep, system_prompt) for p, c in zip(prompts, completions)]
    return step_scores(model, [e[0] for e in encoded], [e[1] for e in encoded], batch_size)


def _check_pairs(prompts: list[str], completions: list[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"completions: expected {len(prompts)} like prompts, got {len(completions)}")


def _in_chunks(model, lengths: list[int], batch_size: int, score: Callable[[list[int]], list]) -> list:
    """`score` over length-sorted chunks of item indices, in eval mode under no_grad (the model's
    train/eval mode is restored after); results in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    out: list = [None] * len(lengths)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                chunk = order[s : s + batch_size]
                for i, value in zip(chunk, score(chunk)):
                    out[i] = value
    finally:
        model.train(was_training)
    return out
