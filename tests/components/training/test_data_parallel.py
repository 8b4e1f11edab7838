"""Data-parallel training (`Trainer` with `torch.distributed`, components/training/distributed.py).

Two gloo processes on CPU train the tiny Llama with `run_sft` at global batch
batch_size x grad_accum = 2 x 4 (each process computes 2 of the 4 micro-batches) and are compared
with one process training on the same global batch. Tolerance: every weight within atol=1e-5
(`torch.allclose`, rtol=0); the two runs differ only in the order float gradients are summed
(measured: max abs difference 1.2e-7 after 4 AdamW steps at lr 3e-3). Both processes end with bitwise-identical
weights, only rank 0 writes checkpoints and logs, and a 2-process run killed after step 2 and
started again resumes from the shared checkpoint to the weights of the uninterrupted run.

The two processes start once for the module (`two_processes`: ~17 s on 2 busy cores, most of it
each spawned process importing torch and transformers; "spawn", not "fork", because the test
session may hold threads, e.g. the Prefect test server's, whose locks a fork would copy).
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from components.config import ArchConfig, TrainConfig
from components.modeling.models import build_tiny_llama
from components.training.loop import Trainer
from components.training.sft import run_sft

ROWS = [{"messages": [{"role": "user", "content": f"{a}*{b}"},
                      {"role": "assistant", "content": f"<think>{a}*{b}={a * b}</think><answer>{a * b}</answer>"}]}
        for a in range(5) for b in range(5)]
ARCH = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=64,
                  max_position_embeddings=128)
CFG = TrainConfig(steps=4, batch_size=2, grad_accum=4, lr=3e-3, warmup_steps=1, ckpt_every=2, log_every=1)
ATOL = 1e-5


def train(tokenizer, ckpt_dir, log=None, stop_after=None):
    """The tiny Llama (seed 0) after `run_sft` on ROWS with CFG; returns (weights, LoopResult)."""
    model = build_tiny_llama(ARCH, tokenizer, seed=0)
    kwargs = {"log": log} if log else {}
    result = run_sft(model, tokenizer, ROWS, CFG, ckpt_dir, seed=0, stop_after=stop_after, **kwargs)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


def _worker(rank: int, world: int, port: int, tokenizer, out) -> None:
    """One of the two processes: a whole run, a killed-and-resumed run, and a step that cannot be split."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logged: list[int] = []
        weights, _ = train(tokenizer, out / f"own-rank{rank}", log=lambda m, s: logged.append(s))
        train(tokenizer, out / "shared", stop_after=2)  # "killed" after step 2
        resumed, again = train(tokenizer, out / "shared")
        model = build_tiny_llama(ARCH, tokenizer, seed=0)
        trainer = Trainer({"model": model}, CFG, out / f"unused-rank{rank}")
        try:
            trainer.step([lambda: (model.lm_head.weight.sum(), {})] * 3)
            error = ""
        except ValueError as e:
            error = str(e)
        torch.save({"weights": weights, "logged": logged, "resumed": resumed, "resumed_from": again.resumed_from,
                    "error": error}, out / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    mp.start_processes(_worker, args=(2, free_port(), tiny_tokenizer, out), nprocs=2, start_method="spawn")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_two_processes_match_one_with_the_same_global_batch(two_processes, tiny_tokenizer, tmp_path, single_thread):
    _, ranks = two_processes
    one, _ = train(tiny_tokenizer, tmp_path)
    start = build_tiny_llama(ARCH, tiny_tokenizer, seed=0).state_dict()
    diff = max((one[k] - ranks[0]["weights"][k]).abs().max().item() for k in one)
    print(f"max abs weight difference, 2 processes vs 1: {diff:.2e}")
    assert all(torch.allclose(one[k], ranks[0]["weights"][k], atol=ATOL, rtol=0) for k in one), diff
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in one), "ranks diverged"
    assert any(not torch.allclose(one[k], start[k], atol=1e-3) for k in one), "training moved the weights"


def test_only_rank_0_writes_checkpoints_and_logs(two_processes):
    out, ranks = two_processes
    assert sorted(p.name for p in (out / "own-rank0").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert not (out / "own-rank1").exists() or not any((out / "own-rank1").iterdir())
    assert ranks[0]["logged"] == [1, 2, 3, 4] and ranks[1]["logged"] == []


def test_a_killed_two_process_run_resumes_on_every_rank(two_processes):
    _, ranks = two_processes
    assert [r["resumed_from"] for r in ranks] == [2, 2]
    for r in ranks:
        assert all(torch.equal(r["resumed"][k], ranks[0]["weights"][k]) for k in r["resumed"])


def test_micro_batches_must_split_evenly_across_processes(two_processes):
    _, ranks = two_processes
    for r in ranks:
        assert "3 micro-batches" in r["error"] and "grad_accum" in r["error"] and "2 processes" in r["error"]
