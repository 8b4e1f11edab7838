"""Distil a teacher causal LM into a smaller student with the same tokenizer.

Two signals, mixed by the recipe (`DistillConfig`):

* sequence-level (Kim & Rush 2016; DeepSeek-R1 §2.4, which distils by SFT on 800k of the
  teacher's curated generations): `teacher_samples` draws K completions per prompt from the
  teacher through the rollout engine and keeps the verified ones exactly as rejection
  sampling does (`components.training.rejection`: correct, well-formed, complete, unique,
  at most k per prompt); the student learns them by maximum likelihood (weight `sft_weight`);
* token-level (Hinton et al. 2015; MiniLLM; GKD): on the same sequences, the frozen teacher's
  next-token distribution at every response position is matched by the student under a
  divergence from `components.algorithms.distill` (`forward-kl`, `reverse-kl`, `jsd` with
  `beta`), both softened by `kd_temperature` (weight `kd_weight`).

    loss = sft_weight * NLL(student; teacher's verified y) + kd_weight * D(teacher || student)

both terms over the response tokens only (the prompt is masked), reduced by `loss_agg`.

Where this departs from the textbook methods:
- Token-level KD runs on the teacher's verified samples (off-policy), not on the student's
  own samples as on-policy GKD (Agarwal et al. 2024) or MiniLLM do: one generation pass,
  before training, serves both terms and is logged as a content-addressed dataset.
- No T^2 rescaling of the divergence at temperature T (Hinton et al. scale the soft loss by
  T^2 to keep gradient sizes comparable); `kd_weight` carries the scale instead.
"""
from __future__ import annotations


import torch

from components.algorithms.distill import distill_loss
from components.algorithms.sft import sft_loss
from components.modeling.student import check_vocab_match
from components.seeds import derive_seed
from components.training.configs import DistillConfig
from components.training.loop import LoopResult, Log, Progress, Trainer, no_log, no_progress
from components.training.rejection import RejectionStats, rejection_sample
from components.training.sft import EncodingError, collate, encode, layout, make_batch_fn, token_shares


def teacher_samples(teacher, tokenizer, rows: list[dict], cfg: DistillConfig, seed: int, engine=None,
                    progress: bool = False) -> tuple[list[dict], RejectionStats]:
    """The teacher's verified completions of `rows` ({"prompt", "answer", ...}) as SFT rows.

    Rejection sampling with `cfg.samples` (see `rejection_sample`) from the teacher, seeded by
    `derive_seed(seed, "distill")` so the draws differ from the rejection stage's under the same
    run seed. Returns the rows (to train on and to log with `dataset_digest`) and the funnel
    stats. Raises a ValueError when nothing was kept.
    """
    kept, stats = rejection_sample(teacher, tokenizer, rows, cfg.samples, derive_seed(seed, "distill"),
                                   engine=engine, progress=progress)
    if not kept:
        raise ValueError(f"distill: the teacher produced no verified sample for {stats.prompts} prompts "
                         f"({stats.generated} generated, {stats.correct} correct, {stats.well_formed} well formed, "
                         f"{stats.in_length} in length); check the teacher, verifier and max_new_tokens")
    return kept, stats


def distill_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                      mask: torch.Tensor, *, sft_weight: float, kd_weight: float, divergence: str = "forward-kl",
                      beta: float = 0.5, temperature: float = 1.0, loss_agg: str = "token-mean",
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mixed distillation loss and its two parts.

    Shapes: student_logits, teacher_logits [B, T, V] aligned with labels [B, T] (already
    shifted: position t predicts labels[:, t]), mask [B, T] (1 on response tokens) -> scalar.
    Formula: loss = sft_weight * NLL + kd_weight * D with NLL = aggregate_t(-log softmax(z^s_t)[y_t])
    and D = aggregate_t(div(softmax(z^s_t / T), softmax(z^t_t / T))), both over the masked
    tokens (`loss_agg`). `teacher_logits` may be None when kd_weight == 0.
    """
    nll = sft_loss(student_logits, labels, mask, loss_agg)
    loss, parts = sft_weight * nll, {"nll": nll.detach()}
    if kd_weight > 0:
        if teacher_logits is None:
            raise ValueError("teacher_logits: required when kd_weight > 0")
        kd = distill_loss(student_logits, teacher_logits, mask, divergence, beta, temperature, loss_agg)
        loss, parts["kd"] = loss + kd_weight * kd, kd.detach()
    return loss, parts


def teacher_logits(teacher, batch: dict) -> torch.Tensor:
    """The frozen teacher's logits [B, T, V] on a padded or packed batch (eval mode, no graph)."""
    teacher.eval()
    with torch.no_grad():
        return teacher(input_ids=batch["input_ids"], use_cache=False, **layout(batch)).logits


def distill_batch_loss(student, teacher, batch: dict, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """`distill_objective` of the student on one collated (input_ids, attention_mask, loss_mask) or
    packed (input_ids, position_ids, loss_mask) batch."""
    tokens = float(batch["loss_mask"][:, 1:].sum())  # counted before the batch moves: no wait on a GPU
    batch = {k: v.to(student.device) for k, v in batch.items()}
    logits = student(input_ids=batch["input_ids"], use_cache=False, **layout(batch)).logits
    t_logits = teacher_logits(teacher, batch)[:, :-1] if cfg.kd_weight > 0 else None
    loss, parts = distill_objective(
        logits[:, :-1], t_logits, batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:], sft_weight=cfg.sft_weight,
        kd_weight=cfg.kd_weight, divergence=cfg.divergence, beta=cfg.beta, temperature=cfg.kd_temperature,
        loss_agg=cfg.loss_agg)
    return loss, {**parts, "tokens": tokens}


def encode_rows(tokenizer, rows: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and response masks of chat rows; a bad row is named by its index."""
    if not rows:
        raise ValueError("distill: no training rows (the teacher's verified samples are empty)")
    out = []
    for i, row in enumerate(rows):
        try:
            ids, mask = encode(tokenizer, row, max_length)
        except (EncodingError, KeyError, TypeError) as e:
            raise ValueError(f"distill: rows[{i}] cannot be encoded: {e!r}") from e
        if sum(mask[1:]) == 0:
            raise ValueError(f"distill: rows[{i}] has no response token within max_length={max_length}")
        out.append((ids, mask))
    return out


def run_distill(student, teacher, tokenizer, rows: list[dict], cfg: DistillConfig, ckpt_dir, seed: int, *,
                student_tokenizer=None, log: Log = no_log, progress: Progress = no_progress,
                stop_after: int | None = None) -> LoopResult:
    """Train `student` towards `teacher` on `rows` (chat SFT rows, e.g. from `teacher_samples`).

    The teacher is frozen (no gradient, eval mode) and must share the student's vocabulary
    (`tokenizer` is the teacher's; pass `student_tokenizer` to compare a pretrained student's
    own). Batches are a pure function of (seed, step), so a run killed after step k and
    started again with the same arguments resumes from `ckpt_dir` to the same weights. With
    `cfg.pack` and token-mean aggregation a batch's sequences are packed into rows of
    `max_length` (`components.training.sft.pack`): the same loss and gradients as padded rows,
    without computing the padding (the teacher's verified samples filled ~69 % of padded rows).
    """
    check_vocab_match(teacher, student, tokenizer, student_tokenizer)
    teacher.requires_grad_(False)
    encoded = encode_rows(tokenizer, rows, cfg.max_length)
    packed = cfg.pack and cfg.loss_agg == "token-mean"  # a row of several sequences has no per-sequence mean
    batch_fn = make_batch_fn(encoded, cfg.batch_size, cfg.grad_accum, seed, tokenizer.pad_token_id,
                             pack_width=cfg.max_length if packed else 0)
    trainer = Trainer({"student": student}, cfg, ckpt_dir, log=log, progress=progress, what="distill")

    def iteration(step: int) -> dict:
        batches = [batch_fn(step, micro) for micro in range(cfg.grad_accum)]
        weights = token_shares(batches) if cfg.loss_agg == "token-mean" else None  # None: equal (a mean of means)
        return trainer.step([lambda b=b: distill_batch_loss(student, teacher, b, cfg) for b in batches],
                            weights=weights)

    return trainer.run(iteration, stop_after=stop_after)


def heldout_divergence(student, teacher, tokenizer, rows: list[dict], cfg: DistillConfig,
                       batch_size: int = 64) -> float:
    """Mean (over response tokens) `cfg.divergence` of the student from the teacher on `rows`."""
    encoded = encode_rows(tokenizer, rows, cfg.max_length)
    total, tokens = 0.0, 0.0
    was_training = student.training
    student.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(student.device) for k, v in batch.items()}
            mask = batch["loss_mask"][:, 1:]
            with torch.no_grad():
                s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
                kd = distill_loss(s, teacher_logits(teacher, batch)[:, :-1], mask, cfg.divergence, cfg.beta,
                                  cfg.kd_temperature, "token-mean")
            total, tokens = total + float(kd) * float(mask.sum()), tokens + float(mask.sum())
    finally:
        student.train(was_training)
    return total / tokens
