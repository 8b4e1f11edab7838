"""Compute-optimal test-time scaling against best-of-N on the held-out split (issue 9, Snell et al. 2024).

Run by hand once trained models exist (not a test):

    .venv/bin/python bench/tts_frontier.py POLICY_DIR --orm ORM_DIR [--prm PRM_DIR] [--eval data/eval.jsonl]

POLICY_DIR is a causal-LM directory (tokenizer inside); ORM_DIR an
AutoModelForSequenceClassification (num_labels=1) and PRM_DIR an AutoModelForTokenClassification
in the conventions of `components/search/verifiers.py`.

Defaults (the settings of the README figure):
  data        --eval data/eval.jsonl (the held-out split), all rows; split by a hash of
              (seed 0, prompt) into dev (50 %) and test (50 %);
  sampling    temperature 0.8, at most 64 new tokens, seed 0, rollout batch 256;
  baseline    best-of-N with the ORM at N = 1, 2, 4, 8, 16 on test;
  compute-    difficulty = disagreement of 4 probe samples (never the true level), 3 quantile
  optimal     bins; arms self_consistency / weighted_best_of_n / best_of_n at N = 1, 2, 4, 8, 16
              (the probes are their first samples) and self_refine with 1 and 2 rounds
              (starting from the probes' majority chain); fitted on dev at budget levels of
              4, 6, 8, 12, 16 policy calls per problem (probes included), evaluated on test;
  reported    mean generated tokens per problem, probes included; the frontier is the tokens
              best-of-N needs for its best test accuracy, the tokens compute-optimal needs to
              reach that accuracy, and their ratio (Snell et al. report > 4x).
With --prm, PRM beam search (width 4) at N = 4, 8, 16 is added to the plot.
Writes summary.json (rows, frontier, plan), accuracy_vs_tokens.png and disagreements.jsonl to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.evaluation.tts import Cell, frontier, run_grid, split_dev_test, summarise, write_outputs  # noqa: E402
from components.generation import PrefixCache, make_engine  # noqa: E402
from components.modeling.models import default_device, load_model, load_tokenizer  # noqa: E402
from components.search import Arm, SearchConfig, Toolkit, fit_compute_optimal  # noqa: E402
from components.search.policy import PolicyFeedback, PolicyGenerator, make_queries  # noqa: E402
from components.search.verifiers import load_outcome_verifier, load_process_verifier  # noqa: E402


def args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("policy")
    p.add_argument("--orm", required=True)
    p.add_argument("--prm")
    p.add_argument("--eval", default="data/eval.jsonl")
    p.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    p.add_argument("--budgets", default="1,2,4,8,16")
    p.add_argument("--levels", default="4,6,8,12,16")
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--bins", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/tts_frontier")
    return p.parse_args()


def toolkit(a) -> tuple[Toolkit, object]:
    tok = load_tokenizer(a.policy)
    policy = load_model(a.policy).eval()
    gen = PolicyGenerator(make_engine("transformers", policy, tok, batch_size=a.batch_size), prefix_cache=PrefixCache())
    fb = PolicyFeedback(gen, tok, max_new_tokens=a.max_new_tokens)
    orm = load_outcome_verifier(a.orm, tok)
    orm.model.to(default_device())
    prm = None
    if a.prm:
        prm = load_process_verifier(a.prm, tok)
        prm.model.to(default_device())
    cfg = SearchConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed)
    return Toolkit(generate=gen, score=orm, score_steps=prm, critique=fb.critique, revise=fb.revise, cfg=cfg), tok


def main() -> None:
    a = args()
    budgets = [int(x) for x in a.budgets.split(",")]
    levels = [int(x) for x in a.levels.split(",")]
    rows = [json.loads(line) for line in Path(a.eval).read_text().splitlines() if line.strip()]
    rows = rows[: a.limit] if a.limit else rows
    dev, test = split_dev_test(rows, 0.5, seed=a.seed)
    tools, tok = toolkit(a)
    queries = lambda rs: make_queries(tok, [r["prompt"] for r in rs])  # noqa: E731
    golds = lambda rs: [str(r["answer"]) for r in rs]  # noqa: E731

    start = time.perf_counter()
    arms = [Arm(s, n) for s in ("self_consistency", "weighted_best_of_n", "best_of_n") for n in budgets]
    arms += [Arm("self_refine", r) for r in (1, 2)]
    plan = fit_compute_optimal(queries(dev), golds(dev), tools, arms, levels, probes=a.probes, n_bins=a.bins)
    fit_s = time.perf_counter() - start

    cells = [Cell("best_of_n", n) for n in budgets]
    cells += [Cell("compute_optimal", lv, {"plan": plan}) for lv in sorted(plan.choices)]
    if a.prm:
        cells += [Cell("beam_search", n, {"width": 4}) for n in budgets if n >= 4]
    results = run_grid(queries(test), golds(test), tools, cells)
    summary = summarise(results)
    front = frontier(summary)
    write_outputs(a.out, results, queries(test), golds(test), extra={"frontier": front, "plan": plan.table,
                  "dev": len(dev), "test": len(test), "fit_seconds": fit_s})

    print(f"dev {len(dev)} / test {len(test)} problems; plan fitted in {fit_s:.0f} s")
    for r in summary:
        print(f"{r['strategy']:>18} @{r['budget']:<3} acc {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              f"  tokens {r['tokens']:8.1f}  policy calls {r['forward_passes']:5.1f}  verifier {r['verifier_calls']:5.1f}")
    reached = (f"compute-optimal reaches it with {front['target_tokens']:.1f} (level {front['target_budget']}): "
               f"{front['ratio']:.2f}x fewer" if front["ratio"] else
               f"compute-optimal never reaches it (best {front['target_best_accuracy']:.3f})")
    print(f"best-of-N: best accuracy {front['accuracy']:.3f} at N={front['baseline_budget']} with "
          f"{front['baseline_tokens']:.1f} tokens per problem; {reached}")
    print(f"outputs in {a.out}")


if __name__ == "__main__":
    main()
