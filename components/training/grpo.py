"""GRPO: the RL stage of DeepSeek-R1 (Guo et al. 2025, §2.2.1; Shao et al. 2024, §4.1).

One iteration, read top to bottom in `grpo_iteration`:

  1. pick `prompts_per_step` prompts from the `PromptPool`: a seeded per-epoch shuffle, a pure
     function of (seed, iteration) unless `retire_solved` retires prompts all of whose samples
     came out correct; the pool's state is checkpointed, so a resumed run sees exactly the
     prompts an unbroken run would;
  2. sample G = `group_size` completions per prompt with the rollout engine; every request's
     random stream is keyed by a seed derived from (seed, iteration);
  3. score them with the weighted `RewardCombiner` (a reward that raises or times out only
     zeroes its own scores and is counted in `reward/failures/<name>`);
  4. group-relative advantages with the registered estimator (`cfg.advantage`);
  5. old-policy log-probs (only if needed, see below) and frozen-reference log-probs (beta > 0);
  6. `ppo_epochs` passes over shuffled minibatches: the `policy_loss` (default ``clip``: the GRPO
     loss), one `Trainer.step` (accumulation, clipping, AdamW) per planned step;
  7. `engine.update_weights(policy)`, log, checkpoint.

Where this departs from the textbook algorithm (Shao et al. 2024, Algorithm 1 / Eq. 3):

* Zero-variance groups (all G rewards equal) are dropped before the update (DAPO §3.2,
  "dynamic sampling") when `skip_zero_variance`, instead of being trained on with advantage 0
  (which would still pull them towards the reference through the KL term). If every group
  is dropped, the update is skipped but the iteration still counts: the data position and
  the LR schedule advance, and a checkpoint is still written on schedule.
* pi_old: when a rollout batch feeds exactly ONE optimizer step (ppo_epochs == 1 and all kept
  sequences fit one minibatch x grad_accum), pi_old is the current policy, so
  old_logp = logp.detach(): the ratio is exactly 1, clipping never triggers, and the loss is
  the plain policy gradient (+ KL), at no extra forward. Otherwise (ppo_epochs > 1, or several
  optimizer steps per batch, where later minibatches are off-policy) one no-grad forward over
  the batch before the first update gives old_logp. The sampler's own log-probs are NOT used
  as old_logp: they come from another numerical path (KV-cache decode, and with vLLM another
  engine and precision), and the ratio must start at 1.
* Clip-higher: the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO §3.1).
* The loss aggregation is configurable (`loss_agg`, default token-mean as in DAPO §3.3, not
  the paper's mean over sequences of per-sequence means); `seq-mean-token-sum-norm`
  (Dr. GRPO) divides by the constant `max_new_tokens`.
* Log-probs (policy, old, reference) are those of softmax(logits / temperature), the
  distribution actually sampled from (top-k/top-p truncation is ignored, as in TRL).
* The reference is the frozen initial policy for the whole run; it is never reset to the
  current policy (DeepSeekMath's "iterative GRPO" does). With `reference=None` it is a copy of
  the policy taken before resuming, or, for a peft policy, the same model with its adapters
  disabled (no copy).
* The LR schedule and its warmup count iterations, not optimizer steps: the number of
  optimizer steps per iteration varies with the number of groups kept.
* An optimizer step consumes `grad_accum` micro-batches of `minibatch_size` sequences; each
  micro-batch loss is weighted by its share of the step's sequences.
* Optional prompt selection by the policy's own pass rate (`pass_rate_band`): before training,
  `pass_rate_samples` (default G) samples of every prompt are scored with the first reward (the exact-correctness one) and
  only prompts whose pass rate lies in [low, high] are kept, so groups have signal. The choice
  is made once, with the initial policy, and saved in `ckpt_dir/pass_rates.json`; a resumed
  run reuses it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from components.algorithms import get_advantage_estimator, get_policy_loss, masked_mean, zero_variance_groups
from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine, owned
from components.io import write_json
from components.modeling.tokenizer import token_ids
from components.rewards import RewardCombiner, RewardFn, RewardResult
from components.seeds import derive_seed
from components.training.loop import Log, LoopResult, Progress, Trainer, no_log, no_progress, shares
from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logprobs

Table = Callable[[list[dict], int], None]


@dataclass
class GRPOResult(LoopResult):
    prompts: int = 0  # prompts trained on (after the pass-rate band)


def run_grpo(policy, tokenizer, rows: list[dict], cfg, ckpt_dir, seed: int, log: Log = no_log,
             reference=None, engine=None, table: Table | None = None, progress: Progress = no_progress,
             stop_after: int | None = None, extra_rewards: Mapping[str, RewardFn] | None = None) -> GRPOResult:
    """Train `policy` with GRPO on canonical rows ``{"prompt", "answer", ...}`` (cfg: RLConfig).

    Extra row columns reach the rewards as per-completion columns. `extra_rewards` are reward
    callables injected by name (e.g. a trained reward model, see `RewardCombiner`); the recipe's
    `cfg.rewards` names them like registered rewards. Resumable from `ckpt_dir`;
    `stop_after` ends the run after that iteration. Raises `NoUpdateError` (and publishes
    nothing) if the whole run made no optimizer step or left the weights unchanged.
    """
    if not rows:
        raise ValueError("GRPO needs at least one prompt row")
    rows_per_call = cfg.prompts_per_step * cfg.group_size
    # an engine passed in stays open; the one made here is closed at the end (its helper processes stop)
    with owned(engine, lambda: make_rollout_engine(cfg.rollout, policy, tokenizer, rows_per_call)) as engine:
        ckpt_dir = Path(ckpt_dir)
        combiner = RewardCombiner.of(cfg.rewards, cfg.reward_timeout_s, extra=extra_rewards)
        prompt_ids = encode_prompts(tokenizer, rows, cfg.system_prompt)
        reference = frozen_reference(policy, reference, cfg.beta)  # before resuming: the initial policy
        selected = (select_by_pass_rate(engine, combiner, rows, prompt_ids, cfg, seed, ckpt_dir, log, progress)
                    if cfg.pass_rate_band else list(range(len(rows))))
        pool = PromptPool(selected, seed, keep_at_least=cfg.prompts_per_step)

        trainer = Trainer({"policy": policy}, cfg, ckpt_dir, log=log, progress=progress, require_update=True,
                          what="GRPO", state={"prompt_pool": pool})

        def iteration(it: int) -> dict:
            metrics, samples = grpo_iteration(it, trainer, policy, reference, engine, combiner, rows, prompt_ids,
                                              pool, cfg, seed, tokenizer.pad_token_id)
            if table is not None and (it % cfg.table_every == 0 or it == cfg.steps):
                table(samples, it)
            return metrics

        result = trainer.run(iteration, stop_after=stop_after, after_resume=lambda: engine.update_weights(policy))
    return GRPOResult(**vars(result), prompts=len(selected))


def make_rollout_engine(rollout, policy, tokenizer, rows_per_call: int):
    """The recipe's rollout backend over `policy` (rollout: a RolloutConfig)."""
    kwargs = rollout.engine_kwargs()
    if "batch_size" in kwargs:
        kwargs["batch_size"] = min(kwargs["batch_size"], rows_per_call)
    return make_engine(rollout.backend, policy, tokenizer, **kwargs)


# --------------------------------------------------------------------------- one iteration


def grpo_iteration(it, trainer, policy, reference, engine, combiner, rows, prompt_ids, pool, cfg, seed,
                   pad_id) -> tuple[dict, list[dict]]:
    """Sample, score and optimise once; returns (metrics, table rows)."""
    t0 = time.perf_counter()
    picks = pool.pick(cfg.prompts_per_step)
    rollout = engine.generate([prompt_ids[i] for i in picks], sampling_params(cfg, derive_seed(seed, "rollout", it)))
    t_generate = time.perf_counter() - t0

    scores = score(combiner, rollout, [rows[i] for i in picks])
    rewards = torch.tensor(scores.total, dtype=torch.float32)
    advantages = get_advantage_estimator(cfg.advantage)(rewards, cfg.group_size)
    flat = zero_variance_groups(rewards, cfg.group_size)
    keep_group = ~flat if cfg.skip_zero_variance else torch.ones_like(flat)
    keep = keep_group.repeat_interleave(cfg.group_size).nonzero().flatten().tolist()
    metrics = rollout_metrics(rollout, scores, combiner.names[0], keep_group)
    if cfg.retire_solved:
        solved = correct_by_prompt(scores, combiner.names[0], cfg.group_size).all(dim=1)
        pool.retire([p for p, done in zip(picks, solved.tolist()) if done])
        metrics.update({"prompts/retired": len(pool.retired), "prompts/active": pool.active()})

    t1 = time.perf_counter()
    if keep:  # else: nothing to learn from this batch; the iteration still counts
        device = next(policy.parameters()).device
        batch = RolloutBatch.from_rollout(rollout, keep, advantages[keep], pad_id, device)
        plan = minibatch_plan(len(batch), cfg, seed, it)
        chunk = cfg.minibatch_size
        if len(plan) > 1:  # later minibatches are off-policy: pi_old must be frozen now
            batch.old_logp = batch_logprobs(policy, batch, cfg.temperature, chunk, cfg.share_prompts)
        if cfg.beta > 0:
            batch.ref_logp = reference_logprobs(policy, reference, batch, cfg.temperature, chunk, cfg.share_prompts)
        policy.train()
        metrics.update(optimise(trainer, batch, plan, lambda mb: minibatch_loss(policy, mb, cfg),
                                token_weighted=cfg.loss_agg == "token-mean"))
        engine.update_weights(policy)
    t_optimise = time.perf_counter() - t1

    total = time.perf_counter() - t0
    metrics.update({"tokens_per_s": rollout.tokens_per_s(), "time/iteration_s": total,
                    "time/generate_frac": t_generate / total, "time/optimize_frac": t_optimise / total})
    return metrics, table_rows(rollout, scores, [rows[i] for i in picks])


# --------------------------------------------------------------------------- prompts and sampling


def pick_prompts(n: int, k: int, seed: int, it: int) -> list[int]:
    """Indices of the `k` prompts of iteration `it` (1-based): positions (it-1)*k .. it*k-1 of a
    stream that visits every prompt once per epoch in a seeded random order."""
    orders: dict[int, list[int]] = {}

    def order(epoch: int) -> list[int]:
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        return orders[epoch]

    return [order(i // n)[i % n] for i in range((it - 1) * k, it * k)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded order in which epoch `epoch` visits prompts 0..n-1."""
    g = torch.Generator().manual_seed(derive_seed(seed, "prompts", epoch))
    return torch.randperm(n, generator=g).tolist()


class PromptPool:
    """The prompts iterations draw from: `pick_prompts`'s stream (every prompt once per epoch, in a
    seeded order) with retired prompts skipped. A prompt is retired (`retire`, with
    `retire_solved`) once all G of its samples in an iteration were correct: its groups would
    carry no signal again, and the samples go to prompts that still have something to teach.
    Retiring stops at `keep_at_least` active prompts, so an iteration never draws a prompt twice.

    Its state (the stream position and the retired set) is part of every checkpoint (`Trainer`'s
    ``state``), so a resumed run draws exactly the prompts an unbroken one would. With nothing
    retired, iteration `it` draws ``pick_prompts(len(indices), k, seed, it)``.
    """

    def __init__(self, indices: list[int], seed: int, keep_at_least: int):
        self.indices, self.seed, self.keep_at_least = list(indices), seed, keep_at_least
        self.cursor, self.retired = 0, set()
        self._orders: dict[int, list[int]] = {}

    def active(self) -> int:
        return len(self.indices) - len(self.retired)

    def pick(self, k: int) -> list[int]:
        """The next `k` active prompts (row indices)."""
        n, out = len(self.indices), []
        while len(out) < k:
            epoch, at = divmod(self.cursor, n)
            if epoch not in self._orders:
                self._orders = {epoch: epoch_order(n, self.seed, epoch)}  # only the current epoch's
            row = self.indices[self._orders[epoch][at]]
            self.cursor += 1
            if row not in self.retired:
                out.append(row)
        return out

    def retire(self, rows: list[int]) -> None:
        for row in rows:
            if self.active() <= self.keep_at_least:
                return
            self.retired.add(row)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "retired": sorted(self.retired)}

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.retired = state["cursor"], set(state["retired"])


def sampling_params(cfg, seed: int) -> SamplingParams:
    return SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, seed=seed)


def encode_prompts(tokenizer, rows: list[dict], system_prompt: str | None) -> list[list[int]]:
    """Chat-templated prompt token ids, computed once for the whole run."""
    return token_ids(tokenizer, [render_prompt(tokenizer, row["prompt"], system_prompt) for row in rows])


def select_by_pass_rate(engine, combiner, rows, prompt_ids, cfg, seed, ckpt_dir: Path, log: Log,
                        progress: Progress = no_progress) -> list[int]:
    """Indices of the prompts whose pass rate under the initial policy lies in `cfg.pass_rate_band`."""
    lo, hi = cfg.pass_rate_band
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"pass_rate_band: expected 0 <= low <= high <= 1, got {cfg.pass_rate_band}")
    probes = cfg.pass_rate_samples or cfg.group_size
    key = {"band": [lo, hi], "seed": seed, "probes": probes, "reward": combiner.names[0],
           "rows": hashlib.sha256(json.dumps([r["prompt"] for r in rows]).encode()).hexdigest()}
    path = ckpt_dir / "pass_rates.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["kept"]
    params = dataclasses.replace(sampling_params(cfg, derive_seed(seed, "pass-rate")), n=probes)
    rollout = engine.generate(prompt_ids, params, progress=progress)
    rates = correct_by_prompt(score(combiner, rollout, rows), combiner.names[0], probes).float().mean(dim=1)
    kept = ((rates >= lo) & (rates <= hi)).nonzero().flatten().tolist()
    log({"prompts/total": len(rows), "prompts/kept": len(kept), "prompts/too_hard": int((rates < lo).sum()),
         "prompts/too_easy": int((rates > hi).sum()), "prompts/mean_pass_rate": float(rates.mean())}, 0)
    if not kept:
        raise ValueError(f"pass_rate_band {cfg.pass_rate_band}: no prompt has a pass rate in the band "
                         f"(mean pass rate {float(rates.mean()):.3f} over {len(rows)} prompts)")
    write_json(path, {"key": key, "kept": kept, "pass_rates": rates.tolist()})
    return kept


# --------------------------------------------------------------------------- rewards


def score(combiner: RewardCombiner, rollout, picked_rows: list[dict]) -> RewardResult:
    """Score every completion; row columns are broadcast per completion, plus `prompts` and
    `completion_lengths` (tokens, EOS included)."""
    per_completion = [picked_rows[i] for i in rollout.prompt_index]
    names = {k for row in picked_rows for k in row} - {"completions"}
    columns = {k: [row.get(k) for row in per_completion] for k in names}
    columns["prompts"] = [row["prompt"] for row in per_completion]
    columns["completion_lengths"] = [len(c) for c in rollout.completion_ids]
    return combiner(rollout.texts, **columns)


def correct_by_prompt(scores: RewardResult, correctness: str, n: int) -> torch.Tensor:
    """[prompts, n] bool: which of each prompt's n samples the correctness reward accepts (> 0.5)."""
    return (torch.tensor(scores.components[correctness]) > 0.5).view(-1, n)


def rollout_metrics(rollout, scores: RewardResult, correctness: str, keep_group: torch.Tensor) -> dict:
    n = len(scores.total)
    kept_rows = keep_group.repeat_interleave(n // len(keep_group)).tolist()
    metrics = {"reward/mean": sum(scores.total) / n,
               "accuracy": sum(s > 0.5 for s in scores.components[correctness]) / n,
               "completion_length": rollout.num_generated_tokens / n,
               "tokens": rollout.num_generated_tokens,
               "tokens_trained": sum(len(c) for c, k in zip(rollout.completion_ids, kept_rows) if k),
               "groups_kept_frac": float(keep_group.float().mean()),
               "groups_dropped": int((~keep_group).sum())}
    for name, values in scores.components.items():
        metrics[f"reward/{name}"] = sum(values) / n
        metrics[f"reward/failures/{name}"] = scores.failures[name]
    return metrics


def table_rows(rollout, scores: RewardResult, picked_rows: list[dict]) -> list[dict]:
    return [{"prompt": picked_rows[p]["prompt"], "completion": text, "reward": r,
             "answer": picked_rows[p].get("answer")}
            for p, text, r in zip(rollout.prompt_index, rollout.texts, scores.total)]


# --------------------------------------------------------------------------- optimisation


def frozen_reference(policy, reference, beta: float):
    """The reference model for the KL term: None when beta == 0 or when a peft policy's
    adapter-free base serves (see `reference_logprobs`), else a frozen eval-mode model."""
    if beta == 0:
        return None
    if reference is None:
        if hasattr(policy, "disable_adapter"):
            return None
        reference = copy.deepcopy(policy).requires_grad_(False)
    return reference.eval()


def reference_logprobs(policy, reference, batch: RolloutBatch, temperature: float, chunk: int,
                       share_prompts: bool = False) -> torch.Tensor:
    if reference is not None:
        return batch_logprobs(reference, batch, temperature, chunk, share_prompts)
    with policy.disable_adapter():
        return batch_logprobs(policy, batch, temperature, chunk, share_prompts)


def minibatch_plan(n: int, cfg, seed: int, it: int) -> list[list[torch.Tensor]]:
    """Optimizer steps of one iteration, each a list of `grad_accum` micro-batches of row indices:
    `ppo_epochs` seeded shuffles of the n kept rows, cut into steps of minibatch_size x grad_accum."""
    per_step = cfg.minibatch_size * cfg.grad_accum
    plan = []
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(derive_seed(seed, "minibatches", it, epoch))
        order = torch.randperm(n, generator=g)
        for s in range(0, n, per_step):
            plan.append(list(order[s : s + per_step].split(cfg.minibatch_size)))
    return plan


def optimise(trainer, batch: RolloutBatch, plan, loss_fn: Callable[[RolloutBatch], tuple],
             token_weighted: bool = False) -> dict:
    """Run the planned optimizer steps (each a list of micro-batches of row indices, weighted by
    their share of the step's rows, or of its completion tokens when `token_weighted`, so that a
    token-mean loss is the token mean over the whole step) with `loss_fn(minibatch) -> (loss,
    metrics)`; returns step-averaged loss statistics (detached tensors)."""
    sums: dict = {}
    mask = batch.completion_mask
    for step in plan:
        sizes = [float(mask[micro.to(mask.device)].sum()) if token_weighted else len(micro) for micro in step]
        stats = trainer.step([lambda micro=micro: loss_fn(batch.select(micro)) for micro in step],
                             weights=shares(sizes))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v / len(plan)
    return sums


def minibatch_loss(policy, mb: RolloutBatch, cfg) -> tuple[torch.Tensor, dict]:
    """The configured policy loss on one micro-batch: ONE forward gives log-probs and entropies."""
    logp, entropy = completion_logprobs(policy, mb, cfg.temperature, with_entropy=True, share_prompts=cfg.share_prompts)
    s = mb.start
    mask = mb.completion_mask[:, s:]
    old_logp = logp.detach() if mb.old_logp is None else mb.old_logp[:, s:]
    ref_logp = None if mb.ref_logp is None else mb.ref_logp[:, s:]
    loss, stats = get_policy_loss(cfg.policy_loss)(
        logp, old_logp, mb.advantages, mask, ref_logp=ref_logp, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
        beta=cfg.beta, kl_estimator=cfg.kl_estimator, loss_agg=cfg.loss_agg, norm_constant=float(cfg.max_new_tokens))
    out = {"loss": loss.detach(), "clip_fraction": stats["clip_fraction"], "entropy": masked_mean(entropy, mask)}
    if "kl" in stats:
        out["kl"] = stats["kl"]
    return loss, out


