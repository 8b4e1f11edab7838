"""Build the curated data set of the default recipe from the arithmetic generator.

One call writes every file the pipeline reads into a directory (atomically), and the same
`DataConfig` always writes byte-identical files, so `dvc add data` on a fresh machine
reproduces the md5 committed in `data.dvc`.

Files (JSON lines):
  pretrain.jsonl     {"prompt", "completion"}         base-model pretraining documents: the problem, then its
                                                      worked steps or a direct chat answer (prompt + completion
                                                      is the document; `completion_only_loss` trains on the rest)
  cold_start.jsonl   {"messages", "prompt", "answer", "level"}  curated worked solutions (reasoning format)
  rl_prompts.jsonl   {"prompt", "answer", "level"}    prompts with gold answers for RL / rejection sampling
  general.jsonl      {"messages", "kind", "level"}    non-reasoning chat rows mixed into SFT (R1 §2.3.3)
  preferences.jsonl  {"prompt", "chosen", "rejected", "kind", "level"}  ordered by the house rules
  rankings.jsonl     {"prompt", "responses", "kind", "level"}  K=3 replies, best first
  align_prompts.jsonl {"prompt", "answer", "kind", "level"}  prompts for the online alignment methods
  eval.jsonl         {"prompt", "answer", "level"}    held-out split: no training file contains these
  pref_eval.jsonl    {"prompt", "answer", "kind", "level"}  held-out prompts for the true preference rate

The preference files follow `components/data/house_rules.py` (what is preferred, and why it is
not correctness) and are built by `components/data/preference_data.py`.
"""
from __future__ import annotations

import random
from pathlib import Path

from components.data import arithmetic as ar
from components.data import preference_data as pd
from components.io import atomic_dir, write_jsonl

FILES = ("pretrain.jsonl", "cold_start.jsonl", "rl_prompts.jsonl", "general.jsonl", "preferences.jsonl",
         "rankings.jsonl", "align_prompts.jsonl", "eval.jsonl", "pref_eval.jsonl")


def chat_text(prompt: str, reply: str) -> str:
    """A chat turn as the tiny tokenizer's template renders it (kept in sync by a test)."""
    return f"<|user|>{prompt}<|end|><|assistant|>{reply}<|end|>"


def plain_text(problem: ar.Problem) -> str:
    """A worked equation as the pretraining corpus writes it: ``7+3*4: 3*4=12 7+12=19``."""
    return "".join(plain_doc(problem).values())


def plain_doc(problem: ar.Problem) -> dict:
    """`plain_text` as a prompt/completion pair: the problem (``7+3*4: ``), then its steps."""
    return {"prompt": f"{problem.expression}: ", "completion": " ".join(problem.steps)}


def chat_doc(prompt: str, reply: str) -> dict:
    """`chat_text` as a prompt/completion pair: the user turn and the assistant tag, then the reply."""
    turn = chat_text(prompt, reply)
    return {"prompt": turn[: -len(f"{reply}<|end|>")], "completion": f"{reply}<|end|>"}


def pretrain_docs(problems: list[ar.Problem], rng: random.Random, direct_fraction: float) -> list[dict]:
    """Worked equations in plain text, and chat turns that answer directly without steps, each as a
    prompt (the problem: its operands are drawn at random, nothing a model can learn to predict)
    and a completion (what follows from the problem).

    The base model thus learns the arithmetic steps and the chat format, but in chat it
    answers at once, which the tiny model gets right only on easy problems; putting the
    steps in the reply (cold start, seed §2.3.1) is what lifts it.
    """
    docs = []
    for p in problems:
        if rng.random() < direct_fraction:
            docs.append(chat_doc(p.expression, f"<answer>{p.answer}</answer>"))
        else:
            docs.append(plain_doc(p))
    return docs


def build(cfg, out_dir: str | Path) -> dict[str, int]:
    """Write every curated file for `cfg` (a DataConfig) into `out_dir`; returns row counts."""
    rng = random.Random(cfg.seed)
    train = lambda n, offset, distinct=True, weights=None: ar.generate(  # noqa: E731
        cfg.seed + offset, n, cfg.levels, heldout=False, distinct=distinct, weights=weights)
    cold = train(cfg.n_cold_start, 1)
    rl = train(cfg.n_rl, 2)
    pre = train(cfg.n_pretrain, 5, distinct=False, weights=cfg.pretrain_level_weights)
    evals = ar.generate(cfg.seed + 6, cfg.n_eval, cfg.levels, heldout=True)
    files = {
        "pretrain.jsonl": pretrain_docs(pre, rng, cfg.direct_answer_fraction),
        "cold_start.jsonl": [  # prompt/answer ride along so cold-start RL can use the same file
            {"messages": [{"role": "user", "content": p.expression},
                          {"role": "assistant", "content": p.solution()}],
             "prompt": p.expression, "answer": str(p.answer), "level": p.level}
            for p in cold
        ],
        "rl_prompts.jsonl": [{"prompt": p.expression, "answer": str(p.answer), "level": p.level} for p in rl],
        "general.jsonl": pd.general_rows(cfg.seed + 7, cfg.n_general, cfg.levels),
        "preferences.jsonl": pd.preference_rows(cfg.seed + 3, cfg.n_preferences, cfg.levels),
        "rankings.jsonl": pd.ranking_rows(cfg.seed + 4, cfg.n_rankings, cfg.levels),
        "align_prompts.jsonl": pd.prompt_rows(cfg.seed + 8, cfg.n_align, cfg.levels, heldout=False),
        "eval.jsonl": [{"prompt": p.expression, "answer": str(p.answer), "level": p.level} for p in evals],
        "pref_eval.jsonl": pd.prompt_rows(cfg.seed + 9, cfg.n_pref_eval, cfg.levels, heldout=True),
    }
    with atomic_dir(out_dir) as tmp:
        counts = {name: write_jsonl(Path(tmp) / name, rows) for name, rows in files.items()}
    return counts
