"""Shared rows and fakes for the alignment-method tests (tiny Llama fixture, one thread)."""
from __future__ import annotations

import pytest
import torch


def pair_rows(n: int = 8) -> list[dict]:
    """Preference pairs with a known truth: the worked solution is preferred to the bare answer."""
    rows = []
    for i in range(n):
        a, b = i % 4 + 1, i // 4 + 2
        rows.append({"prompt": f"{a}+{b}", "chosen": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>",
                     "rejected": f"<answer>{a + b}</answer>"})
    return rows


PROMPTS = [{"prompt": f"{a}+{b}", "answer": str(a + b)} for a in range(4) for b in range(4)]


def digit_share(prompts: list[str], completions: list[str]) -> list[float]:
    """A fake reward model: the share of digits in the completion (learnable by a random tiny model)."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def weights(*models) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.detach().clone() for i, m in enumerate(models) for n, p in m.named_parameters()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def collect():
    logged: dict[int, dict] = {}
    return logged, lambda metrics, step: logged.__setitem__(step, dict(metrics))


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield
