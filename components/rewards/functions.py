"""Reward functions for verifiable-reward RL and their registry.

A reward function scores a batch: ``fn(completions, **columns) -> list[float]``, one score
per completion. ``columns`` are dataset columns broadcast per completion (``answer=[...]``,
``completion_lengths=[...]``, ...) plus configuration bound by name at combine time
(``max_length=...``); every function accepts and ignores columns it does not use.

Nothing here evaluates model output: integers are checked with a regex, and `math_equiv`
relies on math-verify, whose LaTeX path is an ANTLR parser and whose plain-expression path
only hands SymPy strings made of digits and arithmetic operators (no names can reach it).
Answers that would make SymPy compute astronomically (power towers, nested factorials) are
rejected before comparison, since a thread stuck in such a computation cannot be killed.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

RewardFn = Callable[..., list[float]]

REWARDS: dict[str, RewardFn] = {}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function to `REWARDS` under `name`."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(
            f"unknown reward {name!r}; choices: {', '.join(sorted(REWARDS))}"
        ) from None


# --------------------------------------------------------------------------- helpers


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a chat-format list of messages (last one)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def extract_answer(text: str) -> str | None:
    """Content of the last ``<answer>…</answer>`` pair, stripped; None if there is none.

    "Last" means the last closing tag and the nearest opening tag before it, so
    ``<answer>1<answer>2</answer>`` yields ``"2"``.
    """
    end = text.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN) : end].strip()


def _column(columns: dict[str, Any], name: str, n: int) -> Sequence[Any]:
    if name not in columns:
        raise ValueError(f"missing column {name!r} (got {sorted(columns)})")
    value = columns[name]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        value = [value] * n  # a scalar applies to every completion
    if len(value) != n:
        raise ValueError(f"column {name!r} has {len(value)} rows for {n} completions")
    return value


# ASCII digits only: int() would also accept "1_000" and non-ASCII digits like "١٩".
_INT_RE = re.compile(r"\s*([+-]?)([0-9]+)\s*", re.ASCII)


def _canonical_int(value: Any) -> str | None:
    """Canonical decimal form of an integer given as int or str; None if it is not one.

    Compared as strings so huge integers never hit int() conversion limits.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    m = _INT_RE.fullmatch(value)
    if m is None:
        return None
    sign, digits = m.groups()
    digits = digits.lstrip("0") or "0"
    return digits if sign != "-" or digits == "0" else "-" + digits


def _lengths(completions: list, completion_lengths: Any) -> list[int]:
    if completion_lengths is None:
        return [len(completion_text(c)) for c in completions]
    lengths = _column({"completion_lengths": completion_lengths}, "completion_lengths", len(completions))
    return [int(x) for x in lengths]


# --------------------------------------------------------------------------- correctness


@register_reward("exact_int")
def exact_int(completions: list, answer: Any, **_: Any) -> list[float]:
    """1.0 iff the extracted answer is an integer literal equal to the gold `answer`.

    A row without a gold answer (None: a general, non-reasoning prompt) scores 0 for every
    completion, so within a GRPO group it adds no signal. Raises ValueError for a gold answer
    that is not an integer (a data bug, surfaced by the combiner as a failure rather than
    silently scored 0).
    """
    golds = _column({"answer": answer}, "answer", len(completions))
    scores = []
    for completion, gold in zip(completions, golds):
        if gold is None:  # a prompt without a gold answer (general chat): nothing to be right about
            scores.append(0.0)
            continue
        want = _canonical_int(gold)
        if want is None:
            raise ValueError(f"gold answer {gold!r} is not an integer")
        got = extract_answer(completion_text(completion))
        scores.append(1.0 if got is not None and _canonical_int(got) == want else 0.0)
    return scores


_MAX_EXPONENT = 10_000  # |n| in x**n above this is rejected (SymPy would grind on it)
_MAX_FACTORIAL = 1_000  # likewise for n!
_MAX_DIGITS = 20_000  # a numeric power b**e whose value would have more decimal digits is rejected


def _too_expensive(expr: Any) -> bool:
    """True if comparing `expr` could make SymPy compute a gigantic number.

    Every numeric exponent and factorial argument must evaluate (as a float, cheaply) to
    a modest magnitude, and must not itself contain a genuine power or factorial (towers
    such as 9^9^9^9 or 10!!!!). Symbolic ones are left alone: SymPy keeps them unevaluated.
    """
    import sympy

    heavy = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.gamma)
    try:
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, sympy.binomial):  # C(n, k) has about min(k, n-k) * log10(n) digits
                if not node.free_symbols:
                    n, k = node.args
                    small = sympy.Min(abs(k), abs(n - k)).evalf(15)
                    if not small.is_number or bool(small > _MAX_FACTORIAL):
                        return True
                continue
            if isinstance(node, sympy.Pow):
                arg, bound = node.exp, _MAX_EXPONENT
            elif isinstance(node, heavy):
                arg, bound = node.args[0], _MAX_FACTORIAL
            else:
                continue
            if arg.free_symbols:
                continue
            for sub in sympy.preorder_traversal(arg):
                if isinstance(sub, heavy):
                    return True
                # roots and reciprocals (exponent of magnitude <= 1) are fine
                if isinstance(sub, sympy.Pow) and not (sub.exp.is_Number and abs(sub.exp) <= 1):
                    return True
            value = abs(arg.evalf(15))
            if not value.is_number or bool(value > bound):
                return True
            # the exponent is modest, but the base may be huge: (10^{10000})^{10000} has 10^8 digits
            if isinstance(node, sympy.Pow) and not node.base.free_symbols:
                base = abs(node.base.evalf(15))
                if not base.is_number or (bool(base > 0) and bool(abs(value * sympy.log(base, 10)) > _MAX_DIGITS)):
                    return True
    except Exception:  # NaN comparisons, odd objects: do not risk it
        return True
    return False


@register_reward("math_equiv")
def math_equiv(
    completions: list,
    answer: Any,
    max_answer_chars: int = 1_000,
    max_completion_chars: int = 20_000,
    **_: Any,
) -> list[float]:
    """1.0 iff math-verify finds the answer equivalent to the gold `answer` (LaTeX or plain).

    The prediction is the extracted ``<answer>`` content (parsed as LaTeX math, so
    ``\\frac{1}{2}``, ``0.5``, ``\\boxed{3}`` all work), or the whole completion when there
    are no tags (math-verify then looks for ``\\boxed{}``, "final answer is", etc.).

    math-verify's own timeouts use SIGALRM, which fails off the main thread and would
    cancel any other alarm (e.g. pytest-timeout), so they are disabled here; bounding the
    time is the combiner's job (`RewardCombiner.timeout_s`). Predictions longer than
    `max_answer_chars` (whole completions: `max_completion_chars`), or ones whose evaluation
    could explode, score 0 without comparison.
    A gold answer that math-verify cannot parse raises ValueError.
    """
    from math_verify import parse, verify  # heavy import (SymPy, ANTLR): only when used

    golds = _column({"answer": answer}, "answer", len(completions))
    scores = []
    gold_cache: dict[str, list] = {}  # GRPO groups repeat each gold answer
    for completion, gold in zip(completions, golds):
        if gold is None:  # no gold answer (general / marked prompt): nothing to be right about, as in exact_int
            scores.append(0.0)
            continue
        gold_text = str(gold)
        if gold_text not in gold_cache:
            gold_cache[gold_text] = _parse_answer(parse, gold_text)
        gold_parsed = gold_cache[gold_text]
        if not gold_parsed:
            raise ValueError(f"gold answer {gold!r} could not be parsed")
        text = completion_text(completion)
        pred_text = extract_answer(text)
        if pred_text is not None and len(pred_text) <= max_answer_chars:
            pred = _parse_answer(parse, pred_text)
        elif pred_text is None and len(text) <= max_completion_chars:
            pred = parse(text, parsing_timeout=None)  # no tags: math-verify's own anchors, \boxed
        else:
            pred = []
        if not pred or any(_too_expensive(p) for p in pred if not isinstance(p, str)):
            scores.append(0.0)
            continue
        scores.append(1.0 if verify(gold_parsed, pred, timeout_seconds=None) else 0.0)
    return scores


_DELIMITERS = ("$", "\\(", "\\[")


def _parse_answer(parse: Callable[..., list], text: str) -> list:
    """Parse a bare answer. Without math delimiters math-verify only looks for anchored
    or plain numbers (``2^{10}`` would become 2), so try it as ``$text$`` first."""
    text = text.strip()
    if not text:
        return []
    if not any(d in text for d in _DELIMITERS):
        parsed = parse(f"${text}$", parsing_timeout=None)
        if parsed:
            return parsed
    return parse(text, parsing_timeout=None)


# --------------------------------------------------------------------------- format

_FORMAT_RE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.DOTALL)


def _well_formatted(text: str) -> bool:
    text = text.strip()
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(text)
    return m is not None and bool(m.group(1).strip()) and bool(m.group(2).strip())


@register_reward("format")
def format_reward(completions: list, **_: Any) -> list[float]:
    """1.0 iff the stripped completion is exactly ``<think>X</think><answer>Y</answer>``.

    X and Y must be non-blank, each tag must occur exactly once (so no nesting or
    duplicates), and only whitespace may separate ``</think>`` from ``<answer>``.
    """
    return [1.0 if _well_formatted(completion_text(c)) else 0.0 for c in completions]


@register_reward("soft_format")
def soft_format(completions: list, **_: Any) -> list[float]:
    """Partial credit: 0.25 for each of the four tags that occurs exactly once."""
    scores = []
    for c in completions:
        text = completion_text(c)
        scores.append(sum(0.25 for tag in _TAGS if text.count(tag) == 1))
    return scores


# --------------------------------------------------------------------------- length


def _check_overlong(max_length: int = 512, cache_length: int = 128, **_: Any) -> None:
    if not (isinstance(max_length, int) and max_length > 0):
        raise ValueError(f"overlong: max_length must be a positive int, got {max_length!r}")
    if not (isinstance(cache_length, int) and 0 <= cache_length <= max_length):
        raise ValueError(
            f"overlong: cache_length must be an int in [0, max_length={max_length}], got {cache_length!r}"
        )


@register_reward("overlong")
def overlong(
    completions: list,
    max_length: int = 512,
    cache_length: int = 128,
    completion_lengths: Any = None,
    **_: Any,
) -> list[float]:
    """DAPO soft over-long punishment.

    With L the length (tokens from the `completion_lengths` column if given, else
    characters): 0 if L <= max_length - cache_length, then (max_length - cache_length - L)
    / cache_length down to -1 at L == max_length, and -1 beyond.
    """
    _check_overlong(max_length, cache_length)
    free = max_length - cache_length
    scores = []
    for length in _lengths(completions, completion_lengths):
        if length <= free:
            scores.append(0.0)
        elif length <= max_length:
            scores.append((free - length) / cache_length)
        else:
            scores.append(-1.0)
    return scores


overlong.check_kwargs = _check_overlong  # type: ignore[attr-defined]  # used by the combiner


@register_reward("length_penalty")
def length_penalty(
    completions: list,
    answer: Any,
    verifier: str = "exact_int",
    completion_lengths: Any = None,
    prompts: Any = None,
    **_: Any,
) -> list[float]:
    """Kimi k1.5 length penalty, relative within each group of completions.

    lam = 0.5 - (L - L_min) / (L_max - L_min) over completions of the same prompt (the
    `prompts` column; the whole batch without it); a correct completion (per `verifier`)
    gets lam, a wrong one min(0, lam). All zeros when lengths in a group are equal.
    Being relative, it degrades to 0 if the combiner has to score samples one by one.
    """
    n = len(completions)
    correct = get_reward(verifier)(completions, answer=answer)
    lengths = _lengths(completions, completion_lengths)
    keys = [repr(p) for p in _column({"prompts": prompts}, "prompts", n)] if prompts is not None else [""] * n
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    scores = [0.0] * n
    for idx in groups.values():
        lo = min(lengths[i] for i in idx)
        hi = max(lengths[i] for i in idx)
        if hi == lo:
            continue
        for i in idx:
            lam = 0.5 - (lengths[i] - lo) / (hi - lo)
            scores[i] = lam if correct[i] >= 1.0 else min(0.0, lam)
    return scores

