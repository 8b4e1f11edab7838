"""Rejection sampling: hand-computed filter cases, a controlled fake engine, seeded real sampling,
and the content address of the derived data."""
from __future__ import annotations

import pytest
import torch

from components.config import RejectionConfig
from components.data.prompts import render_prompt
from components.generation import Rollout
from components.io import digest_path, write_jsonl
from components.seeds import derive_seed
from components.io import dataset_digest
from components.training.rejection import RejectionStats, filter_samples, rejection_sample
from tests.conftest import temporary_rewards


def accept_all(completions, **_):
    return [1.0] * len(completions)


@pytest.fixture(scope="module", autouse=True)
def _rewards():
    with temporary_rewards(test_rejection_accept_all=accept_all):
        yield


def good(answer, think="2+2") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def stats(prompts, generated, correct, well_formed, in_length, unique, kept, prompts_with_any, tokens):
    return dict(prompts=prompts, generated=generated, correct=correct, well_formed=well_formed,
                in_length=in_length, unique=unique, kept=kept, prompts_with_any=prompts_with_any,
                acceptance_rate=kept / generated if generated else 0.0, tokens=tokens, seconds=0.0)


DEFAULTS = dict(verifier="exact_int", require_format=True, min_tokens=1, max_tokens=20, keep_per_prompt=2)
R4 = {"prompt": "2+2", "answer": "4"}
R6 = {"prompt": "2*3", "answer": "6"}

# Each case: rows, per prompt [(text, tokens, finish_reason)], filter overrides,
# expected kept assistant texts (in output order), expected stats (computed by hand).
CASES = {
    "funnel": (
        [R4],
        [[(good(4), 5, "eos"),                                 # kept (1st)
          (good(5), 5, "eos"),                                 # wrong answer
          ("so it is <answer>4</answer>", 5, "eos"),           # correct, malformed
          (good(4, "a"), 5, "length"),                         # correct, formed, truncated
          ("  " + good(4) + "\n", 5, "stop"),                  # duplicate of the 1st after strip
          (good(4, "4"), 5, "stop")]],                         # kept (2nd)
        {},
        [good(4), good(4, "4")],
        stats(1, 6, 5, 4, 3, 2, 2, 1, 30),
    ),
    "k cap keeps the first k in sample order": (
        [R4],
        [[(good(4, "c"), 9, "eos"), (good(4, "a"), 3, "eos"), (good(4, "b"), 1, "eos")]],
        {"keep_per_prompt": 2},
        [good(4, "c"), good(4, "a")],
        stats(1, 3, 3, 3, 3, 3, 2, 1, 13),
    ),
    "token bounds are inclusive": (
        [R4],
        [[(good(4, "a"), 2, "eos"), (good(4, "b"), 3, "eos"), (good(4, "c"), 5, "eos"), (good(4, "d"), 6, "eos")]],
        {"min_tokens": 3, "max_tokens": 5, "keep_per_prompt": 10},
        [good(4, "b"), good(4, "c")],
        stats(1, 4, 4, 4, 2, 2, 2, 1, 16),
    ),
    "format not required": (
        [R4],
        [[("<answer>4</answer>", 4, "eos"), ("4", 1, "eos"), (good(4), 6, "eos")]],
        {"require_format": False},
        ["<answer>4</answer>", good(4)],
        stats(1, 3, 2, 2, 2, 2, 2, 1, 11),
    ),
    "a prompt with nothing kept": (
        [R4, R6],
        [[(good(5), 4, "eos"), (good(4), 4, "eos")],
         [(good(7), 4, "eos"), (good(6, "x"), 4, "length")]],
        {},
        [good(4)],
        stats(2, 4, 2, 2, 1, 1, 1, 1, 16),
    ),
    "nothing kept at all": (
        [R4, R6],
        [[(good(5), 4, "eos")], [("6", 1, "eos")]],
        {},
        [],
        stats(2, 2, 0, 0, 0, 0, 0, 0, 5),
    ),
    "duplicates do not use up the cap": (
        [R6],
        [[(good(6), 4, "eos"), (good(6), 4, "eos"), (" " + good(6), 4, "eos"), (good(6, "y"), 4, "eos")]],
        {"keep_per_prompt": 2},
        [good(6), good(6, "y")],
        stats(1, 4, 4, 4, 4, 2, 2, 1, 16),
    ),
    "math_equiv verifier": (
        [{"prompt": "1/2", "answer": "\\frac{1}{2}"}],
        [[(good("0.5"), 4, "eos"), (good("1/3"), 4, "eos")]],
        {"verifier": "math_equiv"},
        [good("0.5")],
        stats(1, 2, 1, 1, 1, 1, 1, 1, 8),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_filter_samples_table(name):
    rows, samples, overrides, expected_texts, expected_stats = CASES[name]
    kept, st = filter_samples(
        rows, [[s[0] for s in g] for g in samples], [[s[1] for s in g] for g in samples],
        [[s[2] for s in g] for g in samples], **{**DEFAULTS, **overrides},
    )
    assert [r["messages"][-1]["content"] for r in kept] == expected_texts
    assert st == RejectionStats(**expected_stats)


def test_sft_rows_carry_prompt_answer_extras_and_system():
    rows = [{"prompt": "2+2", "answer": "4", "level": 1, "messages": ["stale"]},
            {"prompt": "2*3", "answer": "6", "level": 2}]
    kept, st = filter_samples(rows, [[" " + good(4) + " "], [good(6)]], [[4], [4]], [["eos"], ["eos"]],
                              **DEFAULTS, system_prompt="Think first.")
    assert kept == [
        {"messages": [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2+2"},
                      {"role": "assistant", "content": good(4)}], "prompt": "2+2", "answer": "4", "level": 1},
        {"messages": [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2*3"},
                      {"role": "assistant", "content": good(6)}], "prompt": "2*3", "answer": "6", "level": 2},
    ]
    plain, _ = filter_samples(rows[1:], [[good(6)]], [[4]], [["eos"]], **DEFAULTS)
    assert [m["role"] for m in plain[0]["messages"]] == ["user", "assistant"]
    metrics = st.as_metrics()
    assert metrics["kept"] == 2.0 and metrics["acceptance_rate"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values()) and set(metrics) == set(RejectionStats.__annotations__)


@pytest.mark.parametrize("args, match", [
    (([], [], [], []), "rows is empty"),
    (([R4], [], [], []), "completions has 0 groups"),
    (([R4], [["a"]], [[1, 2]], [["eos"]]), r"rows\[0\]: 1 completions, 2 lengths"),
    (([{"prompt": "x"}], [["a"]], [[1]], [["eos"]]), r"rows\[0\] lacks column\(s\) \['answer'\]"),
    (([{"prompt": "x", "answer": "seven"}], [[good(7)]], [[1]], [["eos"]]), r"exact_int.*rows\[0\].*seven"),
])
def test_filter_samples_errors(args, match):
    with pytest.raises(ValueError, match=match):
        filter_samples(*args, **DEFAULTS)


def test_filter_samples_rejects_impossible_bounds():
    with pytest.raises(ValueError, match="min_tokens"):
        filter_samples([R4], [[good(4)]], [[3]], [["eos"]], **{**DEFAULTS, "min_tokens": 9, "max_tokens": 8})


# --------------------------------------------------------------------------- rejection_sample


class FakeEngine:
    """Returns hand-written samples, interleaved across prompts (grouping must use prompt_index)."""

    def __init__(self, samples: dict[str, list[tuple[str, int, str]]]):
        self.samples = samples  # user prompt -> [(text, tokens, finish)]
        self.calls = []

    def generate(self, prompts, params, progress=False):
        self.calls.append((list(prompts), params, progress))
        per_prompt = [self.samples[p.split("<|user|>")[1].split("<|end|>")[0]] for p in prompts]
        assert all(len(s) == params.n for s in per_prompt)
        order = [(i, j) for j in range(params.n) for i in range(len(prompts))]
        picked = [per_prompt[i][j] for i, j in order]
        ids = [list(range(tokens)) for _, tokens, _ in picked]
        return Rollout(prompt_ids=[[1] for _ in order], completion_ids=ids, logprobs=[[0.0] * len(x) for x in ids],
                       texts=[t for t, _, _ in picked], finish_reasons=[f for _, _, f in picked],
                       prompt_index=[i for i, _ in order], num_generated_tokens=sum(map(len, ids)), wall_time_s=0.01)


def test_rejection_sample_with_fake_engine(tiny_model, tiny_tokenizer):
    engine = FakeEngine({
        "2+2": [(good(4, "a"), 5, "eos"), (good(3), 5, "eos"), (good(4, "b"), 5, "eos")],
        "2*3": [(good(6), 30, "eos"), (good(6), 5, "length"), (good(6, "z"), 5, "eos")],
        "9-9": [(good(1), 5, "eos")] * 3,
    })
    rows = [dict(R4, level=1), dict(R6, level=2), {"prompt": "9-9", "answer": "0", "level": 1}]
    cfg = RejectionConfig(samples_per_prompt=3, keep_per_prompt=2, temperature=0.7, top_p=0.9, max_new_tokens=32,
                          max_tokens=20, system_prompt="S")
    kept, st = rejection_sample(tiny_model, tiny_tokenizer, rows, cfg, seed=5, engine=engine, progress=True)

    (prompts, params, progress), = engine.calls
    assert prompts == [render_prompt(tiny_tokenizer, r["prompt"], "S") for r in rows]
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens) == (3, 0.7, 0.9, 32)
    assert params.seed == derive_seed(5, "rejection_sampling") and progress is True
    assert [(r["prompt"], r["level"], r["messages"][-1]["content"]) for r in kept] == [
        ("2+2", 1, good(4, "a")), ("2+2", 1, good(4, "b")), ("2*3", 2, good(6, "z"))]
    assert kept[0]["messages"][0] == {"role": "system", "content": "S"}
    assert (st.prompts, st.generated, st.correct, st.well_formed, st.in_length, st.unique, st.kept,
            st.prompts_with_any) == (3, 9, 5, 5, 3, 3, 3, 2)
    assert st.tokens == 5 * 8 + 30 and st.acceptance_rate == pytest.approx(3 / 9) and st.seconds > 0

    limited = FakeEngine({"2+2": engine.samples["2+2"]})
    kept, st = rejection_sample(tiny_model, tiny_tokenizer, rows, cfg.model_copy(update={"limit": 1}), seed=5,
                                engine=limited)
    assert len(limited.calls[0][0]) == 1 and st.prompts == 1 and len(kept) == 2


def test_rejection_sample_rejects_empty_rows(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="rows is empty"):
        rejection_sample(tiny_model, tiny_tokenizer, [], RejectionConfig(), seed=0, engine=FakeEngine({}))




def test_rejection_sample_real_engine_is_seeded(tiny_model, tiny_tokenizer, single_thread):
    rows = [{"prompt": p, "answer": "0", "level": 1} for p in ("1+2", "3*4", "5-6", "7+8")]
    cfg = RejectionConfig(samples_per_prompt=8, keep_per_prompt=3, temperature=1.5, max_new_tokens=24,
                          min_tokens=0, max_tokens=24, verifier="test_rejection_accept_all", require_format=False)
    a, sa = rejection_sample(tiny_model, tiny_tokenizer, rows, cfg, seed=0)
    b, sb = rejection_sample(tiny_model, tiny_tokenizer, rows, cfg, seed=0)
    c, _ = rejection_sample(tiny_model, tiny_tokenizer, rows, cfg, seed=1)
    assert a, "the seeded run should keep some untruncated samples"
    assert a == b and dataset_digest(a) == dataset_digest(b)
    assert {**sa.as_metrics(), "seconds": 0} == {**sb.as_metrics(), "seconds": 0}
    assert a != c
    assert (sa.generated, sa.correct, sa.well_formed) == (32, 32, 32)  # accept-all verifier, no format check
    assert 0 < sa.kept <= sa.unique <= sa.in_length < 32 and sa.kept <= 3 * len(rows)
    assert all(r["messages"][-1]["role"] == "assistant" and r["level"] == 1 for r in a)


# --------------------------------------------------------------------------- dataset_digest


def test_dataset_digest_is_a_content_address(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4 ✓"}],
             "prompt": "2+2", "answer": "4", "level": 1}]
    shuffled = [{"level": 1, "answer": "4", "prompt": "2+2",
                 "messages": [{"content": "2+2", "role": "user"}, {"content": "4 ✓", "role": "assistant"}]}]
    assert dataset_digest(rows) == dataset_digest(shuffled)
    assert len(dataset_digest(rows)) == 64
    assert dataset_digest(rows) != dataset_digest([{**rows[0], "answer": "5"}])
    assert dataset_digest(rows) != dataset_digest(rows + rows)
    two = rows + [{**rows[0], "level": 2}]
    assert dataset_digest(two) != dataset_digest(two[::-1])  # the order of samples is content too
    write_jsonl(tmp_path / "samples.jsonl", two)
    assert dataset_digest(two) == digest_path(tmp_path / "samples.jsonl")
