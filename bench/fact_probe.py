"""How well models know the arithmetic facts of the held-out problems (teacher-forced, no sampling).

    .venv/bin/python bench/fact_probe.py runs/stages/base-<key>/model [more model dirs]

For each model: the share of held-out solution steps whose result it predicts exactly given the
gold text before it, by operation and operand size, and the share of problems all of whose steps
it knows, by level (components/evaluation/facts.py). The last is the ceiling that reasoning RL
on a base meets: a policy with the right plan still needs every fact right.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model directories (safetensors + tokenizer)")
    p.add_argument("--eval", default="data/eval.jsonl", help="held-out problems {prompt, answer, level}")
    p.add_argument("--threads", type=int, default=2)
    return p


def problems_of(path: str):
    """The held-out problems of a {prompt, level} file, read by the project's loader (its errors name file and row)."""
    from components.data.arithmetic import Problem, parse, solve
    from components.data.loaders import DataError, load_records

    try:
        rows = load_records(path, "prompt")
    except DataError as e:
        raise SystemExit(str(e)) from None
    out = []
    for n, row in enumerate(rows, 1):
        parsed, level = parse(row["prompt"]), row.get("level")
        if parsed is None:
            raise SystemExit(f"{path}: row {n}: prompt {row['prompt']!r} is not an arithmetic expression")
        if not isinstance(level, int):
            raise SystemExit(f"{path}: row {n}: column 'level': expected an integer, got {level!r}")
        answer, steps = solve(*parsed)
        out.append(Problem(row["prompt"], answer, steps, level))
    return out


def main() -> None:
    a = parser().parse_args()
    from tasks.console import quiet_libraries

    quiet_libraries()  # before transformers is imported
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.evaluation.facts import step_facts, summarize

    torch.set_num_threads(a.threads)
    for path in a.models:
        if not Path(path, "config.json").exists():
            raise SystemExit(f"{path}: not a model directory (no config.json)")
    problems = problems_of(a.eval)
    for path in a.models:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        s = summarize(step_facts(model, tok, problems))
        print(f"{path}  ({len(problems)} problems, {time.perf_counter() - t0:.0f} s)")
        for k, v in s.items():
            print(f"  {k:24s} {100 * v:5.1f} %")


if __name__ == "__main__":
    main()
