"""Build the curated data set of the default recipe from the arithmetic generator.

One call writes every file the pipeline reads into a directory (atomically), and the same
`DataConfig` always writes byte-identical files, so `dvc add data` on a fresh machine
reproduces the md5 committed in `data.dvc`.

Files (JSON lines):
  pretrain.jsonl     {"text"}                         base-model pretraining documents
  cold_start.jsonl   {"messages", "prompt", "answer", "level"}  curated worked solutions (reasoning format)
  rl_prompts.jsonl   {"prompt", "answer", "level"}    prompts with gold answers for RL / rejection sampling
  preferences.jsonl  {"prompt", "chosen", "rejected", "level"}
  rankings.jsonl     {"prompt", "responses", "level"} K responses, best first
  eval.jsonl         {"prompt", "answer", "level"}    held-out split: no training file contains these
"""
from __future__ import annotations

import random
from pathlib import Path

from components.data import arithmetic as ar
from components.io import atomic_dir, write_jsonl

FILES = ("pretrain.jsonl", "cold_start.jsonl", "rl_prompts.jsonl", "preferences.jsonl",
         "rankings.jsonl", "eval.jsonl")


def chat_text(prompt: str, reply: str) -> str:
    """A chat turn as the tiny tokenizer's template renders it (kept in sync by a test)."""
    return f"<|user|>{prompt}<|end|><|assistant|>{reply}<|end|>"


def pretrain_docs(problems: list[ar.Problem], rng: random.Random, direct_fraction: float) -> list[dict]:
    """Worked equations in plain text, and chat turns that answer directly without steps.

    The base model thus learns the arithmetic steps and the chat format, but in chat it
    answers at once, which the tiny model gets right only on easy problems; putting the
    steps in the reply (cold start, seed §2.3.1) is what lifts it.
    """
    docs = []
    for p in problems:
        if rng.random() < direct_fraction:
            docs.append({"text": chat_text(p.expression, f"<answer>{p.answer}</answer>")})
        else:
            docs.append({"text": f"{p.expression}: {' '.join(p.steps)}"})
    return docs


def wrong_solution(p: ar.Problem, rng: random.Random) -> str:
    """The worked solution with its last step's result off by a little (a plausible slip)."""
    lhs, value = p.steps[-1].split("=")
    bad = int(value) + rng.choice([-2, -1, 1, 2])
    steps = [*p.steps[:-1], f"{lhs}={bad}"]
    return f"<think>{' '.join(steps)}</think><answer>{bad}</answer>"


def ranked_responses(p: ar.Problem, rng: random.Random, k: int) -> list[str]:
    """K responses, best first: worked & correct > direct & correct > worked & wrong > unformatted."""
    ladder = [
        p.solution(),
        f"<answer>{p.answer}</answer>",
        wrong_solution(p, rng),
        f"{p.answer + rng.choice([-3, 3])}",
    ]
    while len(ladder) < k:
        ladder.insert(-1, wrong_solution(p, rng))
    return ladder[:k]


def build(cfg, out_dir: str | Path) -> dict[str, int]:
    """Write every curated file for `cfg` (a DataConfig) into `out_dir`; returns row counts."""
    rng = random.Random(cfg.seed)
    train = lambda n, offset, levels=cfg.levels, distinct=True: ar.generate(  # noqa: E731
        cfg.seed + offset, n, levels, heldout=False, distinct=distinct)
    cold = train(cfg.n_cold_start, 1)
    rl = train(cfg.n_rl, 2)
    prefs = train(cfg.n_preferences, 3)
    ranks = train(cfg.n_rankings, 4)
    pre = train(cfg.n_pretrain, 5, distinct=False)
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
        "preferences.jsonl": [
            {"prompt": p.expression, "chosen": p.solution(), "rejected": wrong_solution(p, rng), "level": p.level}
            for p in prefs
        ],
        "rankings.jsonl": [
            {"prompt": p.expression, "responses": ranked_responses(p, rng, cfg.rank_k), "level": p.level}
            for p in ranks
        ],
        "eval.jsonl": [{"prompt": p.expression, "answer": str(p.answer), "level": p.level} for p in evals],
    }
    with atomic_dir(out_dir) as tmp:
        counts = {name: write_jsonl(Path(tmp) / name, rows) for name, rows in files.items()}
    return counts
