"""Time to accuracy: GRPO in r1flow vs TRL's GRPOTrainer from the same SFT checkpoint (issue 11).

Run by hand once the default recipe has run (not a test):

    .venv/bin/uv pip install --python .venv/bin/python 'trl==1.16.0'    # or: make bench
    .venv/bin/python bench/grpo_time_to_accuracy.py [RECIPE] [--set reasoning_rl.FIELD=VALUE ...]
        [--start models:/default@sft] [--budget 240] [--seeds 0,1,2]
    .venv/bin/python bench/grpo_time_to_accuracy.py --summarise runs/bench/grpo_time_to_accuracy/curves.json

Both sides start from the checkpoint the recipe's `sft` stage produced and train GRPO with the
recipe's own `reasoning_rl` settings (RECIPE, default configs/default.yaml; `--set` overrides as
in `r1flow run`), on the recipe's RL prompts (data/rl_prompts.jsonl, `reasoning_rl.limit` of
them), for the same wall-clock budget of training, one after the other in one process, once per
seed. TRL gets the same settings in its terms (`trl_settings`): one optimizer step per rollout
batch of prompts_per_step x G sequences, the same learning rate and schedule over the same
`reasoning_rl.steps` (a cosine decays over the recipe's iterations on both sides; the clock,
not the step count, ends each run), KL coefficient, clip range, loss aggregation, advantage
scaling, sampling (temperature, top-p, top-k, max new tokens), rewards and their weights, and
precision (the recipe's `model.mixed_precision`: r1flow's autocast, TRL's bf16), torch threads
--threads (1: the setting that was stable on the shared 2-core machine). A setting TRL cannot
express is refused, not approximated. At every --eval-every seconds of training time each
policy is scored greedily on the same held-out problems (data/eval.jsonl, 1,000) by the same
evaluator (`components.evaluation.accuracy.evaluate`); evaluation time is not training time
(the clock is paused). A side that finishes its steps before the budget is scored once more at
its end. Reported per seed: the accuracy-versus-training-time curve of both (table; one PNG
with every seed) and the share of TRL's budget r1flow needs to reach TRL's final accuracy; then
the ratio's mean over the seeds and the ratio of the seed-mean curves (target <= 0.5), and each
side's mean gain. The ratio is read two ways: at the first checkpoint at or above TRL's final
accuracy (for each seed an upper bound: the crossing happened since the checkpoint before) and
where the curve crosses it, linearly between checkpoints. The seed-mean curves are averaged at
the same training times (every --eval-every seconds, each seed interpolated between its
checkpoints). The interpolated ratios come with a 95 % bootstrap interval over the seeds and the
held-out problems (paired: every curve is rescored on the same resampled problems) and the share
of resamples at or under 0.5. What the interval leaves out: a seed's checkpoint times are kept
as recorded, so how a rerun of the same seed would move its curve (timing, which iteration a
checkpoint falls after) enters only as the differences between seeds, and three seeds give ten
distinct draws, which understate the spread between seeds; the share is a description of the
resamples, not a probability that the target is met. curves.json keeps every checkpoint's
outcome per problem, rewritten after every seed (Ctrl-C keeps the seeds already finished);
`--summarise curves.json` reprints the summary without training.

What differs, and why (each is part of what r1flow is, and the recipe turns it on):
  * r1flow samples with its own rollout engine (batched KV-cache decoding, per-sequence early
    stop); TRL calls `model.generate`.
  * r1flow drops groups whose rewards are all equal (`skip_zero_variance`: no gradient, DAPO);
    TRL trains on them with zero advantage.
  * r1flow computes each group's prompt once in its training forwards (`share_prompts`); TRL
    runs every row whole.
  * where the recipe probes pass rates (`pass_rate_band`) or retires solved prompts
    (`retire_solved`), only r1flow does; the probes count in its clock. The default recipe
    does neither.
TRL's cosine spans the recipe's steps, of which it completes fewer in the budget than r1flow
does (on the default recipe ~70 of 170, while r1flow runs all 170 in ~160-170 s and is scored at its end;
before 2026-12-07, ~74 against ~270 of 300): r1flow ends cooled down, TRL mid-schedule.
`--trl-steps N` makes TRL's schedule span N steps instead (a control: N = what it completes in
the budget). With a warmup, TRL's first step has rate 0 and r1flow's 1/warmup_steps.
Defaults reproduce the figure in the README. The figures measured before 2026-12-06 06:50 UTC
(64 prompts a step at a constant rate, beta 0.02, pass-rate probes over the first 4,000 prompts,
bf16) are reproduced by `--set reasoning_rl.prompts_per_step=64 --set reasoning_rl.schedule=constant
--set reasoning_rl.beta=0.02 --set "reasoning_rl.pass_rate_band=[0.1, 0.9]" --set
reasoning_rl.pass_rate_samples=4 --set reasoning_rl.limit=4000 --set reasoning_rl.minibatch_size=512
--set reasoning_rl.share_prompts=false --set model.mixed_precision=bf16 --seeds 0`. Figures measured
before 2026-12-07 started from the `sft` model of the default's earlier chain and ran its 300
iterations: that recipe is `git show f9caa03:configs/default.yaml`, run on that commit's data version.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.console import quiet_libraries  # noqa: E402

quiet_libraries()  # before transformers is imported: the clock's lines are the output

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.data.prompts import render_prompt  # noqa: E402
from components.evaluation.accuracy import evaluate  # noqa: E402
from components.rewards import get_reward  # noqa: E402
from components.training.grpo import run_grpo  # noqa: E402
from components.training.precision import mixed_precision  # noqa: E402

# r1flow's names for what TRL calls loss_type and scale_rewards (its schedules have TRL's names)
TRL_LOSS = {"token-mean": "dapo"}
TRL_SCALE = {"grpo": "group", "dr-grpo": "none"}
# rewards that read only the completions and the dataset's answer column, which TRL passes alike
TRL_REWARDS = {"exact_int", "format", "soft_format", "math_equiv"}


class Clock:
    """Training time: wall time minus the time spent evaluating; evaluates at every `every` seconds.
    `score(model)` gives one 0/1 outcome per held-out problem; the curve keeps their mean, `outcomes` them."""

    def __init__(self, budget: float, every: float, score):
        self.budget, self.every, self.score = budget, every, score
        self.start, self.paused, self.next = time.perf_counter(), 0.0, every
        self.curve: list[tuple[float, float]] = []
        self.outcomes: list[list[float]] = []
        self.steps, self.spent, self.scored_last = 0, False, False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def tick(self, model) -> bool:
        """Called after every optimizer step: evaluate if a checkpoint time passed; True once the budget is spent."""
        self.steps += 1
        t = self.elapsed()
        self.spent = t >= self.budget
        self.scored_last = t >= self.next or self.spent
        if self.scored_last:
            self.evaluate(model, t)
            while self.next <= t:
                self.next += self.every
        return self.spent

    def finish(self, model) -> None:
        """A side that ran out of steps before the budget: scored once more, at its end."""
        if not self.spent and self.steps and not self.scored_last:
            self.evaluate(model, self.elapsed())

    def evaluate(self, model, t: float) -> None:
        t0 = time.perf_counter()
        outcomes = self.score(model)
        self.paused += time.perf_counter() - t0
        self.outcomes.append(outcomes)
        self.curve.append((t, sum(outcomes) / len(outcomes)))
        print(f"    {t:6.1f} s  accuracy {self.curve[-1][1]:.3f}", flush=True)


class Spent(Exception):
    """The training budget is spent."""


def r1flow_side(start: str, rows: list[dict], cfg, precision: str, seed: int, clock: Clock) -> None:
    from components.modeling.models import load_model, load_tokenizer

    model, tok = load_model(start), load_tokenizer(start)
    cfg = cfg.model_copy(update={"ckpt_every": 10**9, "log_every": 1, "table_every": 10**9})

    def log(metrics, step):
        if step > 0 and clock.tick(model):
            raise Spent

    with tempfile.TemporaryDirectory() as ckpt:
        try:
            with mixed_precision(precision, "cpu"):
                run_grpo(model, tok, rows, cfg, ckpt, seed=seed, log=log)
        except Spent:
            return
    clock.finish(model)


def trl_side(start: str, rows: list[dict], cfg, precision: str, seed: int, clock: Clock,
             steps: int | None = None) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(start)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # TRL's deprecated calls

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if clock.tick(model):
                control.should_training_stop = True

    data = Dataset.from_list([{"prompt": render_prompt(tok, r["prompt"], cfg.system_prompt), "answer": r["answer"]}
                              for r in rows])
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), **trl_settings(cfg, precision, seed, steps))
    trainer = GRPOTrainer(model=start, reward_funcs=[trl_reward(item) for item in cfg.rewards], args=args,
                          train_dataset=data, processing_class=tok, callbacks=[Budget()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    clock.finish(trainer.model)


def trl_reward(item):
    """A recipe's reward (registered name, kwargs) as a TRL reward function (dataset columns as keywords)."""
    fn = get_reward(item.name)

    def reward(completions, **columns):
        return fn(completions, **columns, **item.kwargs)

    reward.__name__ = item.name
    return reward


def trl_settings(cfg, precision: str, seed: int, steps: int | None = None) -> dict:
    """GRPOConfig's arguments: the recipe's `reasoning_rl` settings (an RLConfig) in TRL's terms. One
    rollout batch of prompts_per_step x G sequences feeds one optimizer step on both sides, the
    schedule spans the recipe's steps (or `steps`), and the clock ends training. A setting TRL has
    no equivalent for here is refused (SystemExit naming the field), not approximated."""
    rows = cfg.prompts_per_step * cfg.group_size
    refused = [f"reasoning_rl.{field}: {why}" for field, bad, why in [
        ("minibatch_size", cfg.minibatch_size * cfg.grad_accum != rows,
         f"minibatch_size x grad_accum = {cfg.minibatch_size * cfg.grad_accum}, not prompts_per_step x group_size "
         f"= {rows}: the bench compares one optimizer step per rollout batch"),
        ("loss_agg", cfg.loss_agg not in TRL_LOSS, f"{cfg.loss_agg!r} has no TRL loss_type here ({', '.join(TRL_LOSS)})"),
        ("advantage", cfg.advantage not in TRL_SCALE,
         f"{cfg.advantage!r} has no TRL scale_rewards here ({', '.join(TRL_SCALE)})"),
        ("policy_loss", cfg.policy_loss != "clip", f"{cfg.policy_loss!r}: TRL's GRPO loss is the clipped one"),
        ("ppo_epochs", cfg.ppo_epochs != 1, f"{cfg.ppo_epochs}: TRL counts each pass as a scheduler step, r1flow "
         "each iteration; the bench compares one pass"),
        ("finetune", cfg.finetune != "full", f"{cfg.finetune!r}: the bench trains the full model on both sides"),
        ("source", cfg.source is not None, "the bench reads the recipe's data/rl_prompts.jsonl"),
        ("rewards", any(r.name not in TRL_REWARDS for r in cfg.rewards),
         f"{', '.join(r.name for r in cfg.rewards if r.name not in TRL_REWARDS)}: TRL passes the completions and "
         f"the dataset's columns only (like for like: {', '.join(sorted(TRL_REWARDS))})"),
        ("kl_estimator", cfg.beta > 0 and cfg.kl_estimator != "k3", f"{cfg.kl_estimator!r}: TRL's KL term is k3"),
        ("rollout.backend", cfg.rollout.backend != "transformers", "the bench runs both sides on CPU"),
    ] if bad]
    if refused:
        raise SystemExit("grpo_time_to_accuracy: no like-for-like TRL setting for\n  " + "\n  ".join(refused))
    return dict(
        bf16=precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10**9, disable_tqdm=True,  # the clock's lines are the output
        max_steps=steps or cfg.steps, per_device_train_batch_size=rows, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=cfg.group_size, num_iterations=cfg.ppo_epochs,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="constant_with_warmup" if cfg.schedule == "constant" and cfg.warmup_steps else cfg.schedule,
        warmup_steps=cfg.warmup_steps, beta=cfg.beta, epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
        loss_type=TRL_LOSS[cfg.loss_agg], scale_rewards=TRL_SCALE[cfg.advantage],
        reward_weights=[item.weight for item in cfg.rewards], seed=seed, dataloader_num_workers=0,
        disable_dropout=True)


def reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first checkpoint's training time at which `curve` reaches `target` accuracy (the start point does not
    count: a TRL run that ends below its start is not reached at 0 s). An upper bound on the crossing time."""
    return next((t for t, acc in curve if t > 0 and acc >= target), None)


def crossing(curve: list[tuple[float, float]], target: float) -> float | None:
    """The training time at which `curve` crosses `target`, linearly interpolated between the last checkpoint
    below it and the first at or above it (the start point does not count as reaching it, as in `reach`)."""
    for (t0, a0), (t, acc) in zip(curve, curve[1:]):
        if acc >= target:
            return t if a0 >= target else t0 + (t - t0) * (target - a0) / (acc - a0)
    return None


def time_ratio(curves: dict, interpolate: bool = False) -> float | None:
    """The share of TRL's training time r1flow needs to reach TRL's final accuracy (None: it never does), at the
    first checkpoint that reaches it or (`interpolate`) where its curve crosses it."""
    budget, target = curves["trl"][-1]
    t = (crossing if interpolate else reach)(curves["r1flow"], target)
    return None if t is None or budget <= 0 else t / budget  # budget 0: TRL was never scored after its start


def mean_curve(runs: dict, side: str, every: float) -> list[tuple[float, float]]:
    """`side`'s curve averaged over the seeds at the same training times: every `every` seconds and at the end of
    the shortest run (a grid time within half a step of the end gives way to it), each seed's curve interpolated
    linearly between its checkpoints."""
    curves = [c[side] for c in runs.values()]
    end = min(c[-1][0] for c in curves)
    grid = [k * every for k in range(int(end // every) + 1) if k == 0 or end - k * every > every / 2]
    grid += [end] if end > 0 else []
    accs = [np.interp(grid, [t for t, _ in c], [acc for _, acc in c]) for c in curves]
    return [(t, float(sum(a[i] for a in accs) / len(accs))) for i, t in enumerate(grid)]


def ratios(runs: dict, every: float, interpolate: bool) -> tuple[list[float | None], float | None, float | None]:
    """Per seed, their mean (None if a seed never reaches TRL's final accuracy) and the seed-mean curves' ratio
    (None for one seed: its own curves are the ones to read)."""
    each = [time_ratio(curves, interpolate) for curves in runs.values()]
    mean = None if None in each else sum(each) / len(each)
    pooled = None if len(runs) < 2 else time_ratio(
        {side: mean_curve(runs, side, every) for side in ("r1flow", "trl")}, interpolate)
    return each, mean, pooled


def band(values: list[float]) -> dict:
    """The 95 % percentile interval of bootstrap values (inf: never reached) and the share at or under 0.5."""
    v = np.sort(values)
    return {"low": float(v[int(0.025 * len(v))]), "high": float(v[int(np.ceil(0.975 * len(v))) - 1]),
            "at_most_half": float(np.mean(v <= 0.5))}


def resample(runs: dict, outcomes: dict, every: float, reps: int = 2000, seed: int = 0) -> dict:
    """A bootstrap of the interpolated ratios over the seeds and the held-out problems: each replicate draws the
    seeds with replacement and the problems with replacement (the same draw for every curve: the comparisons stay
    paired) and recomputes every accuracy, TRL's final one included. Returns, for the mean over the seeds and the
    seed-mean curves, the 95 % percentile interval and the share of replicates at or under 0.5 (a seed that never
    reaches TRL's final accuracy counts as a ratio above any bound)."""
    rng = np.random.default_rng(seed)
    seeds = list(runs)
    times = {s: {side: [t for t, _ in curve] for side, curve in runs[s].items()} for s in seeds}
    mats = {s: {side: np.array(outcomes[s][side], dtype=float) for side in runs[s]} for s in seeds}
    n = next(iter(mats[seeds[0]].values())).shape[1]
    means, pooled = [], []
    for _ in range(reps):
        weights = rng.multinomial(n, np.full(n, 1 / n)) / n  # how often each problem is drawn, over n
        drawn = [seeds[k] for k in rng.integers(len(seeds), size=len(seeds))]
        rescored = {j: {side: list(zip(times[s][side], (mats[s][side] @ weights).tolist())) for side in runs[s]}
                    for j, s in enumerate(drawn)}
        _, mean, both = ratios(rescored, every, interpolate=True)
        means.append(np.inf if mean is None else mean)
        pooled.append(np.inf if both is None else both)
    return {"mean": band(means), "pooled": band(pooled) if len(seeds) > 1 else None, "reps": reps}


def plot(runs: dict, every: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = {}
    for seed, curves in runs.items():
        for side, curve in curves.items():
            line, = ax.plot([t for t, _ in curve], [acc for _, acc in curve], marker="o", markersize=3,
                            color=colours.get(side), alpha=0.8, label=f"{side}, seed {seed}",
                            linestyle=("-", "--", ":", "-.")[list(runs).index(seed) % 4])
            colours.setdefault(side, line.get_color())
    if len(runs) > 1:
        for side, colour in colours.items():
            mean = mean_curve(runs, side, every)
            ax.plot([t for t, _ in mean], [acc for _, acc in mean], color=colour, linewidth=3,
                    label=f"{side}, mean of {len(runs)} seeds")
    ax.set(xlabel="training wall time (s), evaluation excluded", ylabel="held-out accuracy (greedy)",
           title="GRPO from the same SFT checkpoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", default="configs/default.yaml",
                   help="recipe whose reasoning_rl settings, model.mixed_precision and data both sides use")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value (repeatable)")
    p.add_argument("--start", default="models:/default@sft", help="SFT checkpoint: a directory or models:/ URI")
    p.add_argument("--budget", type=positive_float, default=240.0, help="training seconds per side")
    p.add_argument("--eval-every", type=positive_float, default=30.0, help="seconds of training between scorings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated; both sides run once per seed")
    p.add_argument("--order", default="r1flow,trl")
    p.add_argument("--trl-steps", type=positive_int, default=None,
                   help="TRL's schedule spans this many steps instead of reasoning_rl.steps (a control; see above)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/grpo_time_to_accuracy"))
    p.add_argument("--summarise", type=Path, metavar="CURVES_JSON",
                   help="train nothing: print the summary (and redraw the plot) of a run's curves.json")
    return p


def positive(cast, what: str):
    """An argparse type: `cast(text)`, which must be above 0 and finite, or one error saying what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = 0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int, positive_float = positive(int, "a positive integer"), positive(float, "a positive number of seconds")


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed given twice: {text!r}")
    return seeds


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    if a.summarise:
        return summarise_file(a.summarise)
    from tasks.recipe import load_recipe_or_exit

    recipe = load_recipe_or_exit(a.recipe, a.overrides)
    cfg, precision, data = recipe.reasoning_rl, recipe.model.mixed_precision, Path(recipe.data.dir)
    trl_settings(cfg, precision, 0)  # a setting TRL cannot match is refused before anything trains
    if recipe.evaluate.source is not None:
        raise SystemExit("grpo_time_to_accuracy: evaluate.source: the bench scores data/eval.jsonl of the recipe's data")
    sides = a.order.split(",")
    if not set(sides) <= {"r1flow", "trl"}:
        raise SystemExit(f"--order {a.order}: expected r1flow and/or trl, comma-separated")
    from components.data.loaders import DataError, load_records
    from components.modeling.models import load_model, load_tokenizer

    try:
        rows = load_records(data / "rl_prompts.jsonl", "prompt_answer", limit=cfg.limit)
        heldout = load_records(data / "eval.jsonl", "prompt_answer", limit=recipe.evaluate.limit)
    except DataError as e:
        raise SystemExit(f"grpo_time_to_accuracy: {e}") from None
    torch.set_num_threads(a.threads)
    start = a.start if Path(a.start).is_dir() else local_model(a.start)
    tokenizer = load_tokenizer(start)

    def score(model) -> list[float]:
        was = model.training
        model.eval()
        with torch.inference_mode():
            correct = evaluate(model, tokenizer, heldout, max_new_tokens=recipe.evaluate.max_new_tokens,
                               batch_size=250, system_prompt=recipe.evaluate.system_prompt).correct
        model.train(was)
        return correct

    start_outcomes = score(load_model(start))
    start_acc = sum(start_outcomes) / len(start_outcomes)
    print(f"start {start}: held-out accuracy {start_acc:.3f}\nGRPO as {a.recipe}'s reasoning_rl: "
          f"{cfg.prompts_per_step} prompts x G {cfg.group_size} a step on {len(rows)} prompts, lr {cfg.lr:g} "
          f"({cfg.schedule} over {cfg.steps} steps{f'; TRL: over {a.trl_steps}' if a.trl_steps else ''}), "
          f"beta {cfg.beta:g}, precision {precision}; "
          f"budget {a.budget:.0f} s per side, threads {a.threads}, seeds {','.join(map(str, a.seeds))}")
    runs: dict[int, dict] = {}
    outcomes: dict[int, dict] = {}
    for seed in a.seeds:
        curves = runs[seed] = {}
        outcomes[seed] = {}
        for side in sides:
            torch.set_num_threads(a.threads)
            print(f"  seed {seed}, {side}:", flush=True)
            clock = Clock(a.budget, a.eval_every, score)
            if side == "r1flow":
                r1flow_side(start, rows, cfg, precision, seed, clock)
            else:
                trl_side(start, rows, cfg, precision, seed, clock, a.trl_steps)
            curves[side] = [(0.0, start_acc)] + clock.curve
            outcomes[seed][side] = [start_outcomes] + clock.outcomes
            print(f"  seed {seed}, {side}: {clock.steps} iterations in {clock.elapsed():.0f} s of training")
        print_curves(seed, curves)
        a.out.mkdir(parents=True, exist_ok=True)  # after every seed: an interrupted run keeps the seeds it finished
        save(a.out / "curves.json", runs, outcomes, a.eval_every, argv if argv is not None else sys.argv[1:])
    plot(runs, a.eval_every, a.out / "time_to_accuracy.png")
    summary = summarise(runs, start_acc, a.eval_every, outcomes)
    print(f"curves, per-problem outcomes and plot in {a.out}")
    return summary


def save(path: Path, runs: dict, outcomes: dict, every: float, argv: list[str]) -> None:
    """curves.json: the curves, and each checkpoint's outcome per held-out problem as a string of 0s and 1s."""
    saved = {"every": every, "argv": argv, "runs": {str(s): c for s, c in runs.items()},
             "outcomes": {str(s): {side: ["".join("1" if x > 0.5 else "0" for x in o) for o in marks]
                                   for side, marks in by_side.items()} for s, by_side in outcomes.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(saved))
    tmp.replace(path)


def summarise_file(path: Path) -> dict:
    """The summary of a saved run: curves.json as `main` writes it (or as it wrote it before per-problem outcomes
    were kept: {seed: {side: curve}}, checkpoints every 30 s; then without the bootstrap interval)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"grpo_time_to_accuracy: --summarise {path}: {e}") from None
    try:
        if "runs" not in saved:
            saved = {"every": 30.0, "runs": saved}
        runs = {int(s): {side: [(float(t), float(acc)) for t, acc in curve] for side, curve in c.items()}
                for s, c in saved["runs"].items()}
        outcomes = {int(s): {side: [[float(ch) for ch in marks] for marks in by] for side, by in c.items()}
                    for s, c in saved["outcomes"].items()} if "outcomes" in saved else None
        start_acc = next(iter(next(iter(runs.values())).values()))[0][1]  # every curve starts at the shared checkpoint
        if outcomes is not None and any(len(outcomes[s][side]) != len(runs[s][side]) for s in runs for side in runs[s]):
            raise ValueError("a curve and its outcomes have different numbers of checkpoints")
    except (AttributeError, KeyError, TypeError, ValueError, StopIteration, IndexError) as e:
        raise SystemExit(f"grpo_time_to_accuracy: --summarise {path}: not a curves.json this bench wrote "
                         f"({type(e).__name__}: {e})") from None
    summary = summarise(runs, start_acc, saved["every"], outcomes)
    plot(runs, saved["every"], path.parent / "time_to_accuracy.png")
    print(f"plot redrawn: {path.parent / 'time_to_accuracy.png'}")
    return summary


def print_curves(seed: int, curves: dict) -> None:
    print(f"\n  seed {seed}\n  t (s)  " + "  ".join(f"{s:>8}" for s in curves))
    for i in range(max(len(c) for c in curves.values())):
        print("  " + "  ".join(f"{c[i][0]:6.0f} {c[i][1]:.3f}" if i < len(c) else " " * 12 for c in curves.values()))
    if {"r1flow", "trl"} <= curves.keys():
        budget, target = curves["trl"][-1]
        t, x = reach(curves["r1flow"], target), crossing(curves["r1flow"], target)
        print(f"  TRL's final accuracy {target:.3f} after {budget:.0f} s; r1flow reaches it " + (
            "never (within its budget)\n" if t is None else
            f"at its {t:.0f} s checkpoint (time ratio {t / budget:.3f}), crossing it at {x:.0f} s "
            f"(interpolated: {x / budget:.3f})\n"), flush=True)


def summarise(runs: dict, start_acc: float, every: float, outcomes: dict | None = None) -> dict:
    """Each side's mean final accuracy and gain over the seeds; the time ratio (target <= 0.5) per seed, its mean
    and the seed-mean curves' ratio, first at the checkpoint that reaches TRL's final accuracy (an upper bound)
    and then where the curve crosses it (interpolated), with a bootstrap interval when `outcomes` are given."""
    out: dict = {}
    sides = next(iter(runs.values())).keys()
    for side in sides:
        finals = [curves[side][-1][1] for curves in runs.values()]
        out[side] = sum(finals) / len(finals)
        print(f"{side}: final accuracy {' / '.join(f'{f:.3f}' for f in finals)} over seeds "
              f"{','.join(map(str, runs))}; mean {out[side]:.3f}, gain {100 * (out[side] - start_acc):+.1f} points")
    if not {"r1flow", "trl"} <= set(sides):
        return out

    def shown(value):
        return "never" if value is None or value == np.inf else f"{value:.3f}"

    for key, interpolate, how in [("checkpoint", False, "at the first checkpoint that reaches TRL's final accuracy"),
                                  ("interpolated", True, "where the curve crosses it (linear between checkpoints)")]:
        each, mean, pooled = ratios(runs, every, interpolate)
        out[key] = {"ratios": each, "mean_ratio": mean, "pooled_ratio": pooled}
        print(f"time ratio {how}: per seed {' / '.join(map(shown, each))}; mean {shown(mean)}"
              + ("" if pooled is None else f"; seed-mean curves {shown(pooled)}") + " (target <= 0.5)")
    if outcomes is not None:
        interval = out["interval"] = resample(runs, outcomes, every)
        for key, what in [("mean", "the mean over seeds"), ("pooled", "the seed-mean curves")]:
            if (b := interval[key]) is not None:
                print(f"  {what}, interpolated: 95 % interval {shown(b['low'])} to {shown(b['high'])}, <= 0.5 in "
                      f"{100 * b['at_most_half']:.0f} % of {interval['reps']:,} resamples of seeds and held-out problems")
    return out


def local_model(uri: str) -> str:
    from tasks.settings import configure
    from tasks.tracking import download_model

    root = configure()
    return str(download_model(uri, root / ".r1flow" / "downloads", "start"))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: the seeds finished so far are in the output folder's curves.json "
              "(--summarise it; a run interrupted in its first seed saved nothing)", file=sys.stderr)
        sys.exit(130)
