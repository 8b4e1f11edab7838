"""Canonical record schemas and one normaliser per schema.

A schema accepts one or more *forms*: sets of input columns, tried in order. The loader
picks the first form whose columns are all present in a row and calls the schema's
normaliser with that row and form. Normalisers are pure: they return only the canonical
keys and raise `FieldError(column, problem)`; the loader adds the file and row number,
and carries every column that is not part of the form over as an extra.

Canonical forms:
  text           {"text": str}                        (pretraining documents), or from a prompt/completion
                 pair {"text": prompt + completion, "prompt": prompt}: the document, and the
                 prefix that `completion_only_loss` leaves out of the loss
  sft            {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                 at least one user message, ending with an assistant message.
  prompt_answer  {"prompt": str, "answer": str}      (int/float answers become str)
  prompt         {"prompt": str}                      (other columns, e.g. a nullable answer, ride along)
  preference     {"prompt": str, "chosen": str, "rejected": str}
  ranking        {"prompt": str, "responses": [str, ...]} best first, >= 2, no duplicates.

Ranking direction when responses come unsorted as `completions` plus a key column:
`ranks` sort ascending (rank 1 is best); `scores` sort descending (highest is best).
Ties keep their input order.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

Row = Mapping[str, Any]
Form = tuple[str, ...]

ROLE_ALIASES = {"system": "system", "user": "user", "assistant": "assistant",
                "human": "user", "gpt": "assistant"}          # ShareGPT: from human/gpt
ROLE_KEYS = ("role", "from")
CONTENT_KEYS = ("content", "value")
RANK_DESCENDING = {"ranks": False, "scores": True}


class FieldError(ValueError):
    """A problem with one column of one row; the loader adds the source and row number."""

    def __init__(self, column: str, problem: str):
        super().__init__(f"column '{column}': {problem}")
        self.column = column
        self.problem = problem


@dataclass(frozen=True)
class Schema:
    name: str
    forms: tuple[Form, ...]                   # accepted input column sets, in priority order
    normalise: Callable[[Row, Form], dict]    # (row, matched form) -> canonical keys only

    def match(self, columns) -> Form | None:
        """The first form whose columns are all present, or None."""
        return next((f for f in self.forms if set(f) <= set(columns)), None)

    def closest(self, columns) -> Form:
        """The form sharing most columns with `columns` (first on ties), for error messages."""
        return max(self.forms, key=lambda f: len(set(f) & set(columns)))

    def describe(self) -> str:
        return " | ".join("+".join(form) for form in self.forms)


# --- value checks -------------------------------------------------------------------

def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and not value.strip():
        return "an empty string" if value == "" else "a blank string"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return type(value).__name__


def text(value: Any, column: str, where: str = "") -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise FieldError(column, f"{where}expected a non-empty string, got {describe_value(value)}")


def answer_text(value: Any, column: str) -> str:
    """Answers may be numbers (e.g. 42 in a parquet int column); they become strings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(column, f"expected a string or finite number, got {value}")
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # 42.0 from a float column is the integer 42 (exact_int rejects "42.0")
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise FieldError(column, f"expected a non-empty string or a number, got {describe_value(value)}")


def as_list(value: Any, column: str) -> list:
    """A list, or a JSON-encoded list (CSV cells have no list type)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise FieldError(column, f"invalid JSON list: {e.msg} at char {e.pos}") from None
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    got = "an empty list" if isinstance(value, (list, tuple)) else describe_value(value)
    raise FieldError(column, f"expected a non-empty list, got {got}")


def number(value: Any, column: str, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise FieldError(column, f"{where}expected a finite number, got {describe_value(value)}")


def first_key(obj: Mapping, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if obj.get(k) is not None), None)


def message(value: Any, column: str, index: int) -> dict:
    where = f"message {index}: "
    if not isinstance(value, Mapping):
        raise FieldError(column, f"{where}expected an object with 'role' and 'content', "
                                 f"got {describe_value(value)}")
    role_key, content_key = first_key(value, ROLE_KEYS), first_key(value, CONTENT_KEYS)
    if role_key is None:
        raise FieldError(column, f"{where}missing 'role' (ShareGPT: 'from')")
    if content_key is None:
        raise FieldError(column, f"{where}missing 'content' (ShareGPT: 'value')")
    role = value[role_key]
    if not isinstance(role, str) or role not in ROLE_ALIASES:
        raise FieldError(column, f"{where}unknown role {role!r}; expected one of "
                                 f"{', '.join(ROLE_ALIASES)}")
    return {"role": ROLE_ALIASES[role], "content": text(value[content_key], column, where)}


def messages(value: Any, column: str) -> list[dict]:
    return [message(m, column, i) for i, m in enumerate(as_list(value, column), 1)]


def response(value: Any, column: str, where: str = "") -> str:
    """A response string, or a message list whose final assistant content is the response."""
    if not isinstance(value, (list, tuple)):
        return text(value, column, where)
    replies = [m["content"] for m in messages(value, column) if m["role"] == "assistant"]
    if not replies:
        raise FieldError(column, f"{where}message list has no assistant turn")
    return replies[-1]


# --- normalisers: one per schema ------------------------------------------------------

def normalise_sft(row: Row, form: Form) -> dict:
    if form == ("prompt", "completion"):
        convo = [{"role": "user", "content": text(row["prompt"], "prompt")},
                 {"role": "assistant", "content": text(row["completion"], "completion")}]
    else:
        convo = messages(row[form[0]], form[0])
    roles = [m["role"] for m in convo]
    if "assistant" not in roles:
        raise FieldError(form[0], "conversation has no assistant turn")
    if roles[-1] != "assistant":
        raise FieldError(form[0], f"conversation must end with an assistant message, "
                                  f"but the last one is '{roles[-1]}'")
    if "user" not in roles:
        raise FieldError(form[0], "conversation has no user message")
    return {"messages": convo}


def normalise_prompt_answer(row: Row, form: Form) -> dict:
    prompt_column = form[0]                                   # prompt | question | problem
    return {"prompt": text(row[prompt_column], prompt_column),
            "answer": answer_text(row["answer"], "answer")}


def normalise_prompt(row: Row, form: Form) -> dict:
    return {"prompt": text(row[form[0]], form[0])}


def normalise_preference(row: Row, form: Form) -> dict:
    record = {"prompt": text(row["prompt"], "prompt"),
              "chosen": response(row["chosen"], "chosen"),
              "rejected": response(row["rejected"], "rejected")}
    if record["chosen"] == record["rejected"]:
        raise FieldError("rejected", "identical to 'chosen'")
    return record


def ranked(responses: list[str], keys: Any, key_column: str) -> list[str]:
    """Sort best first: `ranks` ascending (rank 1 is best), `scores` descending."""
    keys = as_list(keys, key_column)
    if len(keys) != len(responses):
        raise FieldError(key_column, f"has {len(keys)} values for {len(responses)} completions")
    keys = [number(k, key_column, f"item {i}: ") for i, k in enumerate(keys, 1)]
    order = sorted(range(len(keys)), key=keys.__getitem__, reverse=RANK_DESCENDING[key_column])
    return [responses[i] for i in order]


def normalise_ranking(row: Row, form: Form) -> dict:
    prompt = text(row["prompt"], "prompt")
    column = form[1]                                          # responses | completions
    responses = [response(r, column, f"item {i}: ")
                 for i, r in enumerate(as_list(row[column], column), 1)]
    if len(form) == 3:                                        # completions + ranks | scores
        responses = ranked(responses, row[form[2]], form[2])
    if len(responses) < 2:
        raise FieldError(column, f"expected at least 2 responses, got {len(responses)}")
    if len(set(responses)) != len(responses):
        raise FieldError(column, "contains duplicate responses")
    return {"prompt": prompt, "responses": responses}


def normalise_text(row: Row, form: Form) -> dict:
    if form == ("prompt", "completion"):
        prompt = text(row["prompt"], "prompt")
        return {"text": prompt + text(row["completion"], "completion"), "prompt": prompt}
    return {"text": text(row[form[0]], form[0])}


SCHEMAS: dict[str, Schema] = {
    "text": Schema("text", (("text",), ("content",), ("prompt", "completion")), normalise_text),
    "sft": Schema("sft", (("messages",), ("conversations",), ("prompt", "completion")),
                  normalise_sft),
    "prompt_answer": Schema("prompt_answer",
                            (("prompt", "answer"), ("question", "answer"), ("problem", "answer")),
                            normalise_prompt_answer),
    "prompt": Schema("prompt", (("prompt",), ("question",), ("problem",)), normalise_prompt),
    "preference": Schema("preference", (("prompt", "chosen", "rejected"),),
                         normalise_preference),
    "ranking": Schema("ranking", (("prompt", "responses"), ("prompt", "completions", "ranks"),
                                  ("prompt", "completions", "scores")),
                      normalise_ranking),
}
