"""Preference rows as lists of encoded responses, best first, and their scores in one forward.

A pair ``{"prompt", "chosen", "rejected"}`` is the list [chosen, rejected]; a ranking
``{"prompt", "responses"}`` is its responses, already best first. An optional numeric
``margin`` column rides along (the Bradley–Terry margin of that row). Errors name the row
(as ``rows[i]`` or ``heldout_rows[i]``) and the column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from components.modeling.reward_models import encode_outcome, outcome_logits


@dataclass(frozen=True)
class EncodedList:
    seqs: list[list[int]]  # token ids of prompt + response, best response first
    margin: float


def as_ranking(row, i: int, default_margin: float = 0.0, name: str = "rows") -> dict:
    """``{"prompt", "responses" (best first), "margin"}`` of a pair or ranking row."""
    where = f"{name}[{i}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a dict, got {type(row).__name__}")
    pair = "chosen" in row or "rejected" in row
    columns = ("prompt", "chosen", "rejected") if pair else ("prompt", "responses")
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; a pair has prompt/chosen/rejected, "
                         f"a ranking prompt/responses (got {sorted(row)})")
    if pair:
        values = [("prompt", row["prompt"]), ("chosen", row["chosen"]), ("rejected", row["rejected"])]
    else:
        if not isinstance(row["responses"], list) or len(row["responses"]) < 2:
            raise ValueError(f"{where}: column 'responses' needs a list of at least 2 responses, "
                             f"got {row['responses']!r}")
        values = [("prompt", row["prompt"]), *(("responses", r) for r in row["responses"])]
    for col, value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: column '{col}' must be a non-empty string, got {value!r}")
    responses = [v for _, v in values[1:]]
    if len(set(responses)) < len(responses):
        what = "'chosen' equals 'rejected'" if pair else "'responses' has duplicates"
        raise ValueError(f"{where}: {what}; there is no preference to learn")
    margin = row.get("margin", default_margin)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"{where}: column 'margin' must be a finite number, got {margin!r}")
    return {"prompt": row["prompt"], "responses": responses, "margin": float(margin)}


def parse_rows(rows: list, default_margin: float = 0.0, name: str = "rows") -> list[dict]:
    """Every row through `as_ranking`; at least one row."""
    if not rows:
        raise ValueError(f"{name}: no preference rows")
    return [as_ranking(row, i, default_margin, name) for i, row in enumerate(rows)]


def encode_lists(tokenizer, lists: list[dict], max_length: int, system_prompt: str | None,
                 what: str) -> tuple[list[EncodedList], int]:
    """Encoded `parse_rows` output and the number of lists dropped for a response over `max_length` tokens."""
    out, dropped = [], 0
    for lst in lists:
        seqs = [encode_outcome(tokenizer, lst["prompt"], r, system_prompt) for r in lst["responses"]]
        if max(map(len, seqs)) > max_length:
            dropped += 1
            continue
        out.append(EncodedList(seqs, lst["margin"]))
    if not out:
        raise ValueError(f"{what}: all {len(lists)} lists are longer than max_length={max_length} tokens")
    return out, dropped


def list_scores(model, lists: list[EncodedList], pad_id: int) -> tuple[Tensor, Tensor]:
    """Scores of every response of `lists` in one forward: ([B, K] float, [B, K] bool mask)."""
    flat = outcome_logits(model, [s for lst in lists for s in lst.seqs], pad_id)
    return to_lists(flat, [len(lst.seqs) for lst in lists])


def to_lists(flat: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
    """Flat scores [sum(sizes)] laid out as [B, max(sizes)] rows (differentiable) and their mask."""
    mask = (torch.arange(max(sizes)).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)).to(flat.device)
    return flat.new_zeros(mask.shape).masked_scatter(mask, flat), mask
