"""Reasoning steps of a completion: the unit a process reward model scores and a tree search expands.

A completion in the reasoning format ``<think>s1 s2 … sk</think><answer>A</answer>`` has the
steps ``s1``..``sk`` (separated by `sep`: one space for the default arithmetic task, a blank
line, ``"\\n\\n"``, for real models) and then one final step, the closing of the think block
with the answer. `split_steps` keeps every character, so ``"".join(split_steps(c)) == c``:
a step prefix is always an exact prefix of the completion text, which is what a PRM is
trained on and what a search continues from.

Example (sep = " "):
    "<think>3*4=12 7+12=19</think><answer>19</answer>"
    -> ["<think>3*4=12 ", "7+12=19", "</think><answer>19</answer>"]
"""
from __future__ import annotations

THINK_CLOSE = "</think>"


def split_steps(completion: str, sep: str = " ") -> list[str]:
    """The steps of `completion` (see the module docstring); text without ``</think>`` is split
    on `sep` alone (an unfinished solution). Empty input gives []."""
    if not sep:
        raise ValueError("sep must be a non-empty string")
    if not completion:
        return []
    head, close, tail = completion.partition(THINK_CLOSE)
    steps: list[str] = []
    start = 0
    while True:
        cut = head.find(sep, start)
        if cut < 0:
            break
        end = cut + len(sep)
        if head[start:cut].strip():  # a separator run belongs to the step before it
            steps.append(head[start:end])
        elif steps:
            steps[-1] += head[start:end]
        else:
            steps.append(head[start:end])
        start = end
    if start < len(head):
        steps.append(head[start:])
    if close:
        steps.append(close + tail)
    return steps


def step_ends(completion: str, sep: str = " ") -> list[int]:
    """Character offsets (exclusive) where each step of `completion` ends."""
    ends, total = [], 0
    for step in split_steps(completion, sep):
        total += len(step)
        ends.append(total)
    return ends


def is_final(step: str) -> bool:
    """True for the step that closes the reasoning and gives the answer."""
    return THINK_CLOSE in step
