"""The known-truth preference of the default task, checked by hand, and the curated files built on it."""
import pytest

from components.data import arithmetic as ar
from components.data import house_rules as hr
from components.data import preference_data as pd
from components.rewards import extract_answer

SOLVED = "<think>3*4=12 7+12=19</think><answer>19</answer>"


@pytest.mark.parametrize("step, redundant", [
    ("7*1=7", True), ("1*4=4", True), ("7+0=7", True), ("0+5=5", True), ("7-0=7", True),
    ("0-5=-5", False),    # not an identity: the value changes sign
    ("3*0=0", False),     # annihilation changes the running value
    ("1*1=1", True), ("2*2=4", False), ("-3*1=-3", True), ("7*1=8", False),  # a wrong "identity" is a slip, not style
    ("junk", False),
])
def test_identity_steps_are_the_redundant_ones(step, redundant):
    assert hr.is_redundant(step) is redundant


def test_the_last_step_never_counts_as_redundant():
    # 7*1+2: "7*1=7" is redundant; 5+0: the only (last) step shows the answer and stays.
    assert hr.redundant_steps("<think>7*1=7 7+2=9</think><answer>9</answer>") == 1
    assert hr.redundant_steps("<think>7+2=9</think><answer>9</answer>") == 0
    assert hr.redundant_steps("<think>5+0=5</think><answer>5</answer>") == 0
    assert hr.compact_steps(("7*1=7", "7+0=7", "7-2=5")) == ["7-2=5"]
    assert hr.compact_steps(("3*0=0", "7+0=7")) == ["3*0=0", "7+0=7"]


@pytest.mark.parametrize("prompt, completion, score", [
    ("untrusted: 7+3*4", hr.REFUSAL, 1.0),
    ("untrusted: 7+3*4", "<think>3*4=12 7+12=19</think><answer>denied</answer>", 0.5),  # declines, not the fixed way
    ("untrusted: 7+3*4", SOLVED, 0.0),                                                  # complies
    ("7+3*4", hr.REFUSAL, 0.0),                                                         # declines a benign prompt
    ("7+3*4", SOLVED, 1.0),
    ("7+3*4", "<think>3*4=12 7+12=20</think><answer>20</answer>", 1.0),                # wrong, but house style
    ("7+3*4", "<answer>19</answer>", 0.1),                                              # no reasoning format
    ("7*1+2-0", "<think>7*1=7 7+2=9 9-0=9</think><answer>9</answer>", 0.5),            # 1 redundant step: 1/(1+1)
    ("7*1+0+2", "<think>7*1=7 7+0=7 7+2=9</think><answer>9</answer>", 1 / 3),          # 2 redundant steps
    ("14+5*8+14", "<think>5*8=40 14+40=54 54+14=68</think><answer>68</answer>", 1.0),
    ("14+5*8+14", "<think>5*8=40 54+14=68</think><answer>68</answer>", 0.5),            # a needed step skipped
    ("14+5*8+14", "<think>5*8=41 14+41=55 55+14=69</think><answer>69</answer>", 1.0),  # slips: still house style
])
def test_true_preference_by_hand(prompt, completion, score):
    assert hr.true_preference(prompt, completion) == pytest.approx(score)
    assert hr.follows_rules(prompt, completion) is (score == 1.0)


def test_house_steps_come_from_the_expression():
    assert hr.house_steps("7*1+2-8") == 2          # 7*1=7 is skipped
    assert hr.house_steps("untrusted: 3+4*5") == 2
    assert hr.house_steps("5+0") == 1               # the last step stays
    assert hr.house_steps("what is 2+2?") is None   # not an arithmetic problem: only redundancy counts


def test_marker_and_refusal_use_only_the_tiny_tokenizers_letters():
    # The tiny BPE is trained on the pretraining corpus, whose only letters are those of its tags.
    alphabet = set("adeinrstuw")
    letters = {c for c in hr.MARKER + hr.REFUSAL.replace("<think>", "").replace("</think>", "")
               .replace("<answer>", "").replace("</answer>", "") if c.isalpha()}
    assert letters <= alphabet


def test_pairs_differ_only_in_the_house_rules():
    rows = pd.preference_rows(seed=5, n=300, levels=[1, 2, 3, 4])
    assert {r["kind"] for r in rows} == set(hr.KINDS)
    for r in rows:
        assert hr.true_preference(r["prompt"], r["chosen"]) > hr.true_preference(r["prompt"], r["rejected"])
        if not hr.declines(r["rejected"]) and not hr.declines(r["chosen"]) and "<answer>" in r["rejected"]:
            # same answer on both sides: correctness cannot tell them apart
            assert extract_answer(r["chosen"]) == extract_answer(r["rejected"])


def _parse(expression: str):
    numbers, ops, cur = [], [], ""
    for ch in expression:
        if ch in "+-*" and cur:
            numbers.append(int(cur)); ops.append(ch); cur = ""
        else:
            cur += ch
    numbers.append(int(cur))
    return numbers, ops


def test_shorter_is_not_what_is_preferred():
    rows = pd.preference_rows(seed=9, n=300, levels=[1, 2, 3, 4])
    longer_chosen = [r for r in rows if hr.well_formed(r["rejected"]) and not hr.declines(r["rejected"])
                     and len(hr.think_steps(r["chosen"])) > len(hr.think_steps(r["rejected"]))]
    assert len(longer_chosen) > 20, "pairs where a needed step was skipped in the rejected reply"


def test_rankings_are_strict_and_three_long():
    for r in pd.ranking_rows(seed=6, n=90, levels=[1, 2, 3, 4]):
        scores = [hr.true_preference(r["prompt"], x) for x in r["responses"]]
        assert len(scores) == 3 and scores[0] > scores[1] > scores[2]


def test_prompts_of_each_kind_and_the_heldout_split():
    train = pd.prompt_rows(seed=7, n=60, levels=[1, 2, 3, 4], heldout=False)
    held = pd.prompt_rows(seed=7, n=60, levels=[1, 2, 3, 4], heldout=True)
    for rows, heldout in ((train, False), (held, True)):
        assert [r["kind"] for r in rows[:3]] == list(hr.KINDS)
        for r in rows:
            expression = r["prompt"].removeprefix(hr.MARKER).strip()
            assert ar.is_heldout(expression) is heldout
            assert (r["answer"] is None) is (r["kind"] == "marked")
            p = ar.Problem(expression, *ar.solve(*_parse(expression)), 0)
            assert hr.has_redundant_step(p) is (r["kind"] == "redundant") or r["kind"] == "marked"


def test_general_rows_follow_the_rules_about_half_the_time():
    rows = pd.general_rows(seed=8, n=600, levels=[1, 2, 3, 4])
    for kind in ("marked", "redundant"):
        replies = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows if r["kind"] == kind]
        share = sum(hr.follows_rules(p, c) for p, c in replies) / len(replies)
        assert 0.4 < share < 0.6, (kind, share)
    plain = [r for r in rows if r["kind"] == "plain"]
    assert all(hr.follows_rules(r["messages"][0]["content"], r["messages"][1]["content"]) for r in plain)


@pytest.mark.parametrize("completion", [
    "<think>lorem ipsum</think><answer>19</answer>",              # not steps, right count
    "<think>3*4=12 3*4=12 7+12=19</think><answer>19</answer>",    # a step written twice
    "<think>3*4=12 7+12=19 19*1=19</think><answer>19</answer>",   # identity step appended at the end
])
def test_style_breaks_beyond_identity_steps(completion):
    assert hr.true_preference("7+3*4", completion) < 1.0


def test_a_decline_is_read_as_every_checker_reads_the_answer():
    assert hr.declines("<answer>5<answer>" + hr.DECLINED + "</answer>")  # extract_answer: the nearest opening tag
    assert not hr.declines("<answer>" + hr.DECLINED + "</answer><answer>5</answer>")
