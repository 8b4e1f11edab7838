"""Compute-optimal test-time scaling against best-of-N on the held-out split (issue 9, Snell et al. 2024).

Run by hand once trained models exist (not a test):

    .venv/bin/python bench/tts_frontier.py POLICY --prm PRM [--orm ORM] [--eval data/eval.jsonl]

POLICY is a causal-LM directory or registry URI (default recipe: models:/default@alignment), PRM
the process reward model (models:/default@process_reward_model), ORM an optional outcome model
of correctness; without one, a completion's score is the PRM's score of its last step (what the
pipeline's tts_eval does). Conventions: `components/search/verifiers.py`.

Defaults (the settings of the README figure):
  data        --eval data/eval.jsonl (the held-out split), all rows; split by a hash of
              (seed 0, prompt) into dev (50 %) and test (50 %);
  sampling    temperature 0.8, at most 64 new tokens, seed 0, rollout batch 256;
  baseline    best-of-N with the verifier at N = 1, 2, 4, 8, 16 on test;
  compute-    difficulty = disagreement of 4 probe samples (never the true level), 3 quantile
  optimal     bins; arms self_consistency / weighted_best_of_n / best_of_n at N = 1, 2, 4, 8, 16
              (the probes are their first samples) and self_refine with 1 and 2 rounds
              (starting from the probes' majority chain); fitted on dev at budget levels of
              4, 6, 8, 12, 16 policy calls per problem (probes included), evaluated on test;
  reported    mean generated tokens per problem, probes included; the frontier is the tokens
              best-of-N needs for its best test accuracy, the tokens compute-optimal needs to
              reach that accuracy, and their ratio (Snell et al. report > 4x).
PRM beam search (width 4) at N = 4, 8, 16 is added to the plot.
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

from components.evaluation.tts_config import CellSpec, ComputeOptimalConfig, TTSConfig  # noqa: E402
from components.evaluation.tts_eval import evaluate_tts  # noqa: E402
from components.generation import make_engine  # noqa: E402
from components.modeling.models import default_device, load_model, load_tokenizer  # noqa: E402
from components.search import SearchConfig  # noqa: E402
from components.search.policy import make_toolkit  # noqa: E402
from components.search.verifiers import load_outcome_verifier, load_process_verifier, process_outcome  # noqa: E402


def local(uri: str) -> str:
    """A model directory, or a runs:/ / models:/ URI downloaded from the project's MLflow store."""
    if Path(uri).is_dir():
        return uri
    from tasks.settings import configure
    from tasks.tracking import download_model

    root = configure()
    return str(download_model(uri, root / ".r1flow" / "downloads", "model"))


def args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("policy")
    p.add_argument("--prm", required=True)
    p.add_argument("--orm")
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


def config(a) -> TTSConfig:
    budgets = [int(x) for x in a.budgets.split(",")]
    cells = [CellSpec(strategy="best_of_n", budgets=budgets)]
    cells.append(CellSpec(strategy="beam_search", budgets=[n for n in budgets if n >= 4], options={"width": 4}))
    arms = [CellSpec(strategy=s, budgets=budgets) for s in ("self_consistency", "weighted_best_of_n", "best_of_n")]
    arms.append(CellSpec(strategy="self_refine", budgets=[1, 2]))
    co = ComputeOptimalConfig(probes=a.probes, bins=a.bins, levels=[int(x) for x in a.levels.split(",")], arms=arms)
    search = SearchConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed)
    return TTSConfig(search=search, cells=cells, compute_optimal=co, limit=a.limit)


def main() -> None:
    a = args()
    cfg = config(a)
    policy, prm_dir, orm_dir = (local(x) if x else None for x in (a.policy, a.prm, a.orm))
    tok = load_tokenizer(policy)
    engine = make_engine("transformers", load_model(policy).eval(), tok, batch_size=a.batch_size)
    prm = load_process_verifier(prm_dir, tok)
    prm.model.to(default_device())
    if orm_dir:
        score = load_outcome_verifier(orm_dir, tok)
        score.model.to(default_device())
    else:
        score = process_outcome(prm, "last", cfg.search.step_sep)
    tools = make_toolkit(engine, tok, cfg.search, score=score, score_steps=prm)
    rows = [json.loads(line) for line in Path(a.eval).read_text().splitlines() if line.strip()]

    start = time.perf_counter()
    out = evaluate_tts(rows, tools, tok, cfg, a.out)
    for r in out["rows"]:
        print(f"{r['strategy']:>18} @{r['budget']:<3} acc {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              f"  tokens {r['tokens']:8.1f}  policy calls {r['forward_passes']:5.1f}  verifier {r['verifier_calls']:5.1f}")
    f = out["frontier"]
    reached = (f"compute-optimal reaches it with {f['target_tokens']:.1f} (level {f['target_budget']}): "
               f"ratio {f['ratio']:.2f} (best-of-N tokens / compute-optimal tokens)" if f["ratio"] else
               f"compute-optimal never reaches it (its best: {f['target_best_accuracy']:.3f})")
    print(f"best-of-N: best test accuracy {f['accuracy']:.3f} at N={f['baseline_budget']} with "
          f"{f['baseline_tokens']:.1f} tokens per problem; {reached}")
    print(f"{time.perf_counter() - start:.0f} s; outputs in {a.out}")


if __name__ == "__main__":
    main()
