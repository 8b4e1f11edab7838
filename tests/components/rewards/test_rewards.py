from __future__ import annotations

import logging
import math
import os
import threading
import time

import numpy as np
import pytest

from components.rewards import (
    REWARDS,
    RewardCombiner,
    RewardResult,
    RewardSpec,
    exact_int,
    extract_answer,
    format_reward,
    get_reward,
    length_penalty,
    math_equiv,
    overlong,
    soft_format,
)

COMBINER_LOG = "components.rewards.combiner"


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_registered_name_resolves_and_scores_a_batch(name):
    fn = get_reward(name)
    assert fn is REWARDS[name]
    batch = ["<think>3*4=12 7+12=19</think><answer>19</answer>", "no tags"]
    scores = fn(batch, answer=[19, "19"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_required_rewards_are_registered():
    assert {"exact_int", "math_equiv", "format", "soft_format", "overlong", "length_penalty"} <= set(REWARDS)


def test_get_reward_unknown_lists_choices():
    with pytest.raises(ValueError, match="nope") as err:
        get_reward("nope")
    assert "exact_int" in str(err.value) and "math_equiv" in str(err.value)


# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer>19</answer>", "19"),
        ("<answer>  19 \n</answer>", "19"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>1<answer>2</answer>", "2"),
        ("<answer></answer>", ""),
        ("no tags at all", None),
        ("<answer>19", None),
        ("19</answer>", None),
        ("</answer><answer>", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --------------------------------------------------------------------------- exact_int

PWNED = "R1FLOW_REWARD_PWNED"

EXACT_INT_CASES = [
    # (completion, gold, expected)
    ("<think>3*4=12 7+12=19</think><answer>19</answer>", 19, 1.0),
    ("<think>t</think><answer>19</answer>", "19", 1.0),
    ("<think>t</think><answer>18</answer>", 19, 0.0),
    ("<think>t</think><answer>-7</answer>", -7, 1.0),
    ("<think>t</think><answer>-7</answer>", "-7", 1.0),
    ("<think>t</think><answer>7</answer>", -7, 0.0),
    ("<think>t</think><answer>+19</answer>", 19, 1.0),
    ("<think>t</think><answer>  19 \n</answer>", 19, 1.0),
    ("<think>t</think><answer>0019</answer>", 19, 1.0),
    ("<think>t</think><answer>-0</answer>", 0, 1.0),
    ("<think>t</think><answer>12345678901234567890123</answer>", "12345678901234567890123", 1.0),
    ("<think>t</think>19", 19, 0.0),  # missing tags
    ("19", 19, 0.0),
    ("<think>t</think><answer>", 19, 0.0),
    ("<answer>5</answer><answer>19</answer>", 19, 1.0),  # last answer counts
    ("<answer>19</answer><answer>5</answer>", 19, 0.0),
    ("<think>t</think><answer>19abc</answer>", 19, 0.0),
    ("<think>t</think><answer>1e3</answer>", 1000, 0.0),
    ("<think>t</think><answer>19.0</answer>", 19, 0.0),
    ("<think>t</think><answer>1_000</answer>", 1000, 0.0),
    ("<think>t</think><answer>--19</answer>", 19, 0.0),
    ("<think>t</think><answer>+-19</answer>", -19, 0.0),
    ("<think>t</think><answer>1 9</answer>", 19, 0.0),
    ("<think>t</think><answer>\u0661\u0669</answer>", 19, 0.0),  # Arabic-Indic digits
    ("<think>t</think><answer>12+7</answer>", 19, 0.0),
    ("<think>t</think><answer></answer>", 0, 0.0),
    (f"<answer>__import__('os').environ.__setitem__('{PWNED}', '1')</answer>", 0, 0.0),
    ("<answer>__import__('os')</answer>", 0, 0.0),
]


@pytest.mark.parametrize("completion, gold, expected", EXACT_INT_CASES)
def test_exact_int_table(completion, gold, expected):
    assert exact_int([completion], answer=[gold]) == [expected]
    assert PWNED not in os.environ  # nothing was executed


def test_exact_int_batch_and_bad_gold():
    batch = [c for c, _, _ in EXACT_INT_CASES]
    assert exact_int(batch, answer=[g for _, g, _ in EXACT_INT_CASES]) == [e for _, _, e in EXACT_INT_CASES]
    with pytest.raises(ValueError, match="not an integer"):
        exact_int(["<answer>1</answer>"], answer=["one"])
    with pytest.raises(ValueError, match="rows"):
        exact_int(["<answer>1</answer>"] * 2, answer=[1, 2, 3])


def test_exact_int_scores_a_prompt_without_gold_zero_for_every_completion():
    # a general (non-reasoning) prompt in GRPO: a constant reward adds nothing to the group advantage
    assert exact_int(["<answer>1</answer>", "<think>x</think><answer>denied</answer>"], answer=[None, None]) == [0, 0]
    assert exact_int(["<answer>1</answer>", "<answer>1</answer>"], answer=[None, 1]) == [0, 1]


# --------------------------------------------------------------------------- math_equiv

MATH_CASES = [
    ("<think>t</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("<think>t</think><answer>0.5</answer>", "\\frac{1}{2}", 1.0),
    ("<think>t</think><answer>1/2</answer>", "\\frac{1}{2}", 1.0),
    ("<think>t</think><answer>\\boxed{3}</answer>", "3", 1.0),
    ("So the final answer is $\\boxed{3}$.", "3", 1.0),  # no tags: whole completion
    ("<think>t</think><answer>2^{10}</answer>", "1024", 1.0),
    ("<think>t</think><answer>\\sqrt{2}^2</answer>", "2", 1.0),
    ("<think>t</think><answer>-7</answer>", -7, 1.0),
    ("<think>t</think><answer>19</answer>", 19, 1.0),
    ("<think>t</think><answer>\\frac{1}{3}</answer>", "0.5", 0.0),
    ("<think>t</think><answer>4</answer>", "3", 0.0),
    ("<think>t</think><answer>\\boxed{4}</answer>", "3", 0.0),
    ("<think>t</think><answer></answer>", "3", 0.0),
    ("I don't know", "3", 0.0),
    # power towers / nested factorials would make SymPy grind forever: rejected up front
    ("<think>t</think><answer>9^{9^{9^{9}}}</answer>", "3", 0.0),
    ("<think>t</think><answer>10!!!!</answer>", "3", 0.0),
    ("<think>t</think><answer>2^{99999*99999}</answer>", "3", 0.0),
    # a modest exponent on a huge base: 10^(10^8) digits, computed holding the GIL (no timeout can fire)
    ("<think>t</think><answer>(10^{10000})^{10000}</answer>", "3", 0.0),
    ("<think>t</think><answer>(10^{-10000})^{-10000}</answer>", "3", 0.0),
    ("The final answer is (10^10000)^10000", "3", 0.0),
    ("<think>t</think><answer>\\binom{10^{7}}{10^{6}}</answer>", "3", 0.0),
    ("<think>t</think><answer>(2^{3})^{2}</answer>", "64", 1.0),
    ("<think>t</think><answer>\\binom{2024}{2}</answer>", "2047276", 1.0),
    ("<think>t</think><answer>None</answer>", None, 0.0),  # no gold answer: 0, as exact_int
    (f"<answer>__import__('os').environ.__setitem__('{PWNED}', '1')</answer>", "1", 0.0),
]


@pytest.mark.parametrize("completion, gold, expected", MATH_CASES)
def test_math_equiv_table(completion, gold, expected):
    assert math_equiv([completion], answer=[gold]) == [expected]
    assert PWNED not in os.environ


def test_math_equiv_off_the_main_thread():
    batch = [c for c, _, _ in MATH_CASES]
    golds = [g for _, g, _ in MATH_CASES]
    out: dict = {}

    def work():
        try:
            out["scores"] = math_equiv(batch, answer=golds)
        except BaseException as exc:  # pragma: no cover - reported below
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert "error" not in out, out.get("error")
    assert out["scores"] == [e for _, _, e in MATH_CASES]


def test_math_equiv_unparseable_gold_raises():
    with pytest.raises(ValueError, match="could not be parsed"):
        math_equiv(["<answer>1</answer>"], answer=[""])


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "completion, expected, soft",
    [
        ("<think>3*4=12</think><answer>12</answer>", 1.0, 1.0),
        ("  <think>a\nb</think>\n<answer>12</answer>\n", 1.0, 1.0),
        ("<think></think><answer>12</answer>", 0.0, 1.0),  # empty think
        ("<think>  </think><answer>12</answer>", 0.0, 1.0),
        ("<think>x</think><answer> </answer>", 0.0, 1.0),  # empty answer
        ("<think>x</think><answer>1</answer><answer>2</answer>", 0.0, 0.5),  # duplicated
        ("<think>x<think>y</think></think><answer>1</answer>", 0.0, 0.5),  # nested
        ("<think>x</think>junk<answer>1</answer>", 0.0, 1.0),
        ("<answer>1</answer><think>x</think>", 0.0, 1.0),  # wrong order
        ("<think>x</think><answer>1</answer> trailing", 0.0, 1.0),
        ("preamble <think>x</think><answer>1</answer>", 0.0, 1.0),
        ("<think>x</think><answer>1", 0.0, 0.75),
        ("<answer>1</answer>", 0.0, 0.5),
        ("just text", 0.0, 0.0),
    ],
)
def test_format_and_soft_format(completion, expected, soft):
    assert format_reward([completion]) == [expected]
    assert soft_format([completion]) == [soft]


def test_format_accepts_chat_messages():
    msgs = [{"role": "assistant", "content": "<think>a</think><answer>1</answer>"}]
    assert format_reward([msgs]) == [1.0]


# --------------------------------------------------------------------------- overlong


@pytest.mark.parametrize(
    "length, expected",
    # max_length=10, cache_length=4: free up to 6, then -1/4 per unit, -1 at 10 and beyond
    [(0, 0.0), (5, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (9, -0.75), (10, -1.0), (11, -1.0), (1000, -1.0)],
)
def test_overlong_boundaries(length, expected):
    assert overlong(["x" * length], max_length=10, cache_length=4) == [pytest.approx(expected)]
    # tokens from completion_lengths take precedence over characters
    assert overlong(["ignored text"], max_length=10, cache_length=4, completion_lengths=[length]) == [
        pytest.approx(expected)
    ]


def test_overlong_hard_cutoff_and_defaults():
    assert overlong(["a", "b"], max_length=10, cache_length=0, completion_lengths=[10, 11]) == [0.0, -1.0]
    assert overlong(["x"], completion_lengths=[384]) == [0.0]  # defaults 512 / 128
    assert overlong(["x"], completion_lengths=[448]) == [-0.5]
    with pytest.raises(ValueError):
        overlong(["x"], max_length=10, cache_length=11)


def test_length_penalty_per_group():
    comps = ["<answer>1</answer>", "<answer>1</answer>", "<answer>2</answer>", "<answer>1</answer>"]
    scores = length_penalty(
        comps, answer=[1, 1, 1, 1], completion_lengths=[10, 20, 20, 5], prompts=["p", "p", "p", "q"]
    )
    # group p: lengths 10..20 -> lam 0.5, -0.5, -0.5; sample 2 is wrong -> min(0, -0.5); group q: single
    assert scores == [0.5, -0.5, -0.5, 0.0]


# --------------------------------------------------------------------------- combiner


def test_combiner_weighted_sum():
    comb = RewardCombiner(
        [
            RewardSpec("exact_int", weight=2.0),
            RewardSpec("format", weight=0.5),
            RewardSpec("overlong", weight=1.0, kwargs={"max_length": 10, "cache_length": 4}),
        ]
    )
    comps = [
        "<think>a</think><answer>19</answer>",  # right, formatted, 35 chars -> overlong -1
        "<answer>19</answer>",  # right, unformatted
        "<think>a</think><answer>5</answer>",  # wrong, formatted
        "x",  # nothing
    ]
    res = comb(comps, answer=[19, 19, 19, 19], completion_lengths=[4, 8, 6, 1])
    assert isinstance(res, RewardResult)
    assert res.components == {
        "exact_int": [1.0, 1.0, 0.0, 0.0],
        "format": [1.0, 0.0, 1.0, 0.0],
        "overlong": [0.0, -0.5, 0.0, 0.0],
    }
    assert res.total == pytest.approx([2.5, 1.5, 0.5, 0.0])
    assert res.failures == {"exact_int": 0, "format": 0, "overlong": 0}
    assert comb.names == ["exact_int", "format", "overlong"]


def test_combiner_empty_batch():
    res = RewardCombiner([RewardSpec("format")])([])
    assert res.total == [] and res.components == {"format": []} and res.failures == {"format": 0}


@pytest.mark.parametrize(
    "specs, kwargs, match",
    [
        ([RewardSpec("nope")], {}, r"'nope'.*exact_int"),
        ([RewardSpec("format", weight=float("nan"))], {}, "finite"),
        ([RewardSpec("format", weight=float("inf"))], {}, "finite"),
        ([RewardSpec("format", weight="heavy")], {}, "number"),
        ([RewardSpec("format"), RewardSpec("format")], {}, "twice"),
        ([RewardSpec("overlong", kwargs={"max_len": 3})], {}, "max_len"),
        ([RewardSpec("overlong", kwargs={"max_length": 10, "cache_length": 20})], {}, "cache_length"),
        ([RewardSpec("overlong", kwargs={"max_length": 0})], {}, "max_length"),
        ([], {}, "at least one"),
        ([RewardSpec("format")], {"timeout_s": 0}, "timeout_s"),
        ([RewardSpec("format")], {"timeout_s": float("inf")}, "timeout_s"),
    ],
)
def test_combiner_validates_at_construction(specs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardCombiner(specs, **kwargs)


def test_injected_rewards_are_named_weighted_and_fail_like_registered_ones():
    def reward_model(completions, prompts, **_):
        return [len(c) + 0.5 * len(p) for p, c in zip(prompts, completions)]

    def broken(completions, **_):
        raise RuntimeError("reward model server down")

    comb = RewardCombiner([RewardSpec("format", 1.0), RewardSpec("reward_model", 2.0), RewardSpec("rm2", 1.0)],
                          extra={"reward_model": reward_model, "rm2": broken})
    res = comb(["<think>a</think><answer>1</answer>", "ab"], prompts=["pq", "p"])
    assert res.components["reward_model"] == [35.0, 2.5]
    assert res.total == pytest.approx([1.0 + 70.0, 5.0])
    assert res.components["rm2"] == [0.0, 0.0] and res.failures["rm2"] == 2
    with pytest.raises(ValueError, match="shadow registered rewards"):
        RewardCombiner([RewardSpec("format")], extra={"format": reward_model})
    with pytest.raises(ValueError, match=r"unknown reward 'rm3'.*reward_model"):
        RewardCombiner([RewardSpec("rm3")], extra={"reward_model": reward_model})


# -- misbehaving rewards, registered temporarily


@pytest.fixture
def release():
    """An event that sleeping rewards wait on; set at teardown so leaked threads end."""
    ev = threading.Event()
    yield ev
    ev.set()


def _raise_on_boom(completions, **_):
    if any(c == "boom" for c in completions):
        raise RuntimeError("kaboom")
    return [1.0] * len(completions)


def _answer_echo(completions, answer, scale=1.0, **_):
    if len(completions) > 1:
        raise RuntimeError("only one at a time")
    return [float(a) * scale for a in answer]


def test_reward_raising_on_one_sample(monkeypatch, caplog):
    monkeypatch.setitem(REWARDS, "flaky", _raise_on_boom)
    comb = RewardCombiner([RewardSpec("flaky", weight=2.0), RewardSpec("format")])
    with caplog.at_level(logging.WARNING, logger=COMBINER_LOG):
        res = comb(["a", "boom", "<think>t</think><answer>1</answer>"])
    assert res.components["flaky"] == [1.0, 0.0, 1.0]
    assert res.failures == {"flaky": 1, "format": 0}
    assert res.total == [2.0, 0.0, 3.0]
    warnings = [r for r in caplog.records if r.name == COMBINER_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "flaky" in warnings[0].getMessage() and "kaboom" in warnings[0].getMessage()


def test_per_sample_fallback_slices_columns_and_keeps_bound_kwargs(monkeypatch):
    monkeypatch.setitem(REWARDS, "echo", _answer_echo)
    comb = RewardCombiner([RewardSpec("echo", kwargs={"scale": 10.0})])
    res = comb(["a", "b", "c"], answer=[1, 2, 3])
    assert res.components["echo"] == [10.0, 20.0, 30.0]
    assert res.failures == {"echo": 0}


def test_a_recipes_reward_items_build_the_same_combiner():
    from components.config import RewardItem

    items = [RewardItem(name="exact_int", weight=1.0), RewardItem(name="format", weight=0.2)]
    comb = RewardCombiner.of(items, timeout_s=2.0)
    assert comb.specs == [RewardSpec("exact_int", 1.0, {}), RewardSpec("format", 0.2, {})] and comb.timeout_s == 2.0
    with pytest.raises(ValueError, match="unknown reward 'exact_intt'"):
        RewardCombiner.of([RewardItem(name="exact_intt")])


def test_reward_sleeping_past_timeout(monkeypatch, release):
    def slow_on_one(completions, **_):
        if "slow" in completions:
            release.wait(5)
        return [1.0] * len(completions)

    def always_slow(completions, **_):
        release.wait(5)
        return [1.0] * len(completions)

    monkeypatch.setitem(REWARDS, "slow_one", slow_on_one)
    monkeypatch.setitem(REWARDS, "slow_all", always_slow)

    comb = RewardCombiner([RewardSpec("slow_one"), RewardSpec("format")], timeout_s=0.2)
    t0 = time.monotonic()
    res = comb(["a", "slow", "b"])
    elapsed = time.monotonic() - t0
    assert res.components["slow_one"] == [1.0, 0.0, 1.0]  # the others were rescued per sample
    assert res.failures == {"slow_one": 1, "format": 0}
    assert elapsed < 1.5  # ~2 x timeout_s, never the 5 s sleep

    comb = RewardCombiner([RewardSpec("slow_all", weight=3.0)], timeout_s=0.2)
    t0 = time.monotonic()
    res = comb(["a", "b", "c", "d"])
    assert time.monotonic() - t0 < 1.5
    assert res.total == [0.0] * 4 and res.failures == {"slow_all": 4}


@pytest.mark.parametrize(
    "fn, expected, failed",
    [
        (lambda completions, **_: [1.0] * (len(completions) + 1), [0.0] * 3, 3),  # always too long
        (lambda completions, **_: [0.5], [0.5] * 3, 0),  # constant length 1: rescued per sample
        (lambda completions, **_: [], [0.0] * 3, 3),
        (lambda completions, **_: None, [0.0] * 3, 3),
        (lambda completions, **_: 1.0, [0.0] * 3, 3),
        (lambda completions, **_: [1.0, float("nan"), float("inf")], [1.0, 0.0, 0.0], 2),  # non-finite
        (lambda completions, **_: [1.0, None, "x"], [1.0, 0.0, 0.0], 2),
        (lambda completions, **_: np.array([0.25, 0.5, 1.0]), [0.25, 0.5, 1.0], 0),
        (lambda completions, **_: (True, False, 1), [1.0, 0.0, 1.0], 0),
    ],
)
def test_reward_bad_returns(monkeypatch, caplog, fn, expected, failed):
    monkeypatch.setitem(REWARDS, "weird", fn)
    with caplog.at_level(logging.WARNING, logger=COMBINER_LOG):
        res = RewardCombiner([RewardSpec("weird")])(["a", "b", "c"])
    assert res.components["weird"] == expected
    assert res.total == expected
    assert res.failures == {"weird": failed}
    warnings = [r for r in caplog.records if r.name == COMBINER_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == (1 if failed else 0)
    if failed:
        assert "weird" in warnings[0].getMessage()


def test_combiner_with_math_equiv_in_worker_threads():
    comb = RewardCombiner(
        [RewardSpec("math_equiv"), RewardSpec("format", weight=0.1)], timeout_s=30
    )
    comps = [c for c, _, _ in MATH_CASES]
    res = comb(comps, answer=[g for _, g, _ in MATH_CASES])
    assert res.failures == {"math_equiv": 0, "format": 0}
    assert res.components["math_equiv"] == [e for _, _, e in MATH_CASES]


def test_bad_gold_becomes_a_counted_failure_not_a_crash():
    res = RewardCombiner([RewardSpec("exact_int")])(
        ["<answer>1</answer>", "<answer>2</answer>"], answer=[1, "two"]
    )
    assert res.components["exact_int"] == [1.0, 0.0]
    assert res.failures == {"exact_int": 1}
