import hashlib
import json
import random
import re

import pytest

from components.data import arithmetic as ar
from components.data.curate import FILES, build, chat_text, plain_text
from components.data.house_rules import MARKER, true_preference
from components.config import DataConfig


@pytest.mark.parametrize("numbers, ops, answer, steps", [
    # 7+3*4-2: the product first (12), then left to right: 7+12=19, 19-2=17.
    ([7, 3, 4, 2], ["+", "*", "-"], 17, ("3*4=12", "7+12=19", "19-2=17")),
    # 2*3*4: products left to right.
    ([2, 3, 4], ["*", "*"], 24, ("2*3=6", "6*4=24")),
    # 5-9+1: subtraction is left-associative, negatives allowed.
    ([5, 9, 1], ["-", "+"], -3, ("5-9=-4", "-4+1=-3")),
    ([8, 0], ["*"], 0, ("8*0=0",)),
])
def test_solve_respects_precedence(numbers, ops, answer, steps):
    assert ar.solve(numbers, ops) == (answer, steps)


def test_problems_match_python_arithmetic():
    rng = random.Random(0)
    for level in ar.LEVELS:
        for _ in range(200):
            p = ar.sample_problem(rng, level)
            # the expression uses only digits and + - *, so this is a plain integer check
            tokens = p.expression.replace("-", " - ").replace("+", " + ").replace("*", " * ").split()
            total, term, sign = 0, int(tokens[0]), 1
            for op, num in zip(tokens[1::2], map(int, tokens[2::2])):
                if op == "*":
                    term *= num
                else:
                    total, term, sign = total + sign * term, num, (1 if op == "+" else -1)
            assert p.answer == total + sign * term
            assert p.solution() == f"<think>{' '.join(p.steps)}</think><answer>{p.answer}</answer>"


def test_generate_is_deterministic_and_distinct():
    a = ar.generate(3, 300, [1, 2, 3, 4], heldout=False)
    assert a == ar.generate(3, 300, [1, 2, 3, 4], heldout=False)
    assert len({p.expression for p in a}) == 300
    with pytest.raises(ValueError, match="cannot draw"):
        ar.generate(0, 1000, [1], heldout=False)  # only ~270 distinct level-1 problems exist
    with pytest.raises(ValueError, match="unknown level"):
        ar.generate(0, 5, [7], heldout=False)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    cfg = DataConfig(n_pretrain=3000, n_cold_start=200, n_rl=500, n_general=60, n_preferences=100, n_rankings=50,
                     n_align=60, n_eval=300, n_pref_eval=60)
    out = tmp_path_factory.mktemp("data") / "data"
    counts = build(cfg, out)
    return cfg, out, counts


def test_curated_files_and_counts(curated):
    cfg, out, counts = curated
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert counts["eval.jsonl"] == 300 and counts["cold_start.jsonl"] == 200


HELDOUT_FILES = ("eval.jsonl", "pref_eval.jsonl")


def _expression(row: dict) -> str:
    if "completion" in row:  # a pretraining document, whose prompt is the problem: "7+3: " or a chat turn's start
        return row["prompt"].removeprefix("<|user|>").split("<|end|>")[0].removesuffix(": ")
    prompt = row.get("prompt") or row["messages"][0]["content"]
    return prompt.removeprefix(MARKER).strip()


@pytest.mark.parametrize("expression, form", [
    ("3*9+8", "+3*9+8"), ("8+9*3", "+3*9+8"), ("9*3+8", "+3*9+8"),  # factors and terms sorted
    ("7-3+2", "+2+7-3"), ("7+2-3", "+2+7-3"),  # a term keeps its sign
    ("4*2*3", "+2*3*4"), ("5-2*3", "+5-2*3"), ("12", "+12"),
    ("19*0-4*5", "+0*19-4*5"),
    (" 6+2 ", "+2+6"), ("not a sum", "not a sum"),
])
def test_canonical_form(expression, form):
    assert ar.canonical(expression) == form


def test_canonical_form_keeps_the_value():
    rng = random.Random(1)
    for level in ar.LEVELS:
        for _ in range(200):
            p = ar.sample_problem(rng, level)
            numbers, ops = ar.parse(ar.canonical(p.expression).removeprefix("+"))
            assert ar.solve(numbers, ops)[0] == p.answer


def _reordered(expression: str, rng: random.Random) -> str:
    """The same sum with its terms and each term's factors shuffled (a '+' term first)."""
    terms = [(t[0], t[1:].split("*")) for t in re.findall(r"[+-][\d*]+", "+" + expression)]
    for _, factors in terms:
        rng.shuffle(factors)
    rng.shuffle(terms)
    terms.sort(key=lambda t: t[0] == "-")  # stable: a '+' term leads, the rest keep their shuffle
    return "".join(sign + "*".join(f) for sign, f in terms).removeprefix("+")


def test_commuted_copies_share_a_split():
    assert len({ar.is_heldout(e) for e in ("3*9+8", "9*3+8", "8+3*9", "8+9*3")}) == 1
    rng, moved = random.Random(2), 0
    for _ in range(2000):
        p = ar.sample_problem(rng, rng.choice([2, 3, 4]))
        other = _reordered(p.expression, rng)
        assert ar.solve(*ar.parse(other))[0] == p.answer
        assert ar.is_heldout(other) == ar.is_heldout(p.expression), (p.expression, other)
        moved += other != p.expression
    assert moved > 1000  # most draws were really reordered


def test_heldout_split_never_overlaps_training(curated):
    _, out, _ = curated
    evals = {_expression(json.loads(line)) for name in HELDOUT_FILES for line in (out / name).open()}
    assert evals and all(ar.is_heldout(e) for e in evals)
    forms = {ar.canonical(e) for e in evals}
    for name in set(FILES) - set(HELDOUT_FILES):
        for line in (out / name).read_text().splitlines():
            expression = _expression(json.loads(line))
            assert ar.canonical(expression) not in forms, f"{name} contains (a reordering of) held-out problem {expression}"


def test_same_config_writes_identical_bytes(curated, tmp_path):
    cfg, out, _ = curated
    build(cfg, tmp_path / "again")
    for name in FILES:
        assert hashlib.md5((out / name).read_bytes()).digest() == hashlib.md5((tmp_path / "again" / name).read_bytes()).digest()


def test_preferences_and_rankings_are_ordered_by_the_house_rules(curated):
    _, out, _ = curated
    for line in (out / "preferences.jsonl").open():
        row = json.loads(line)
        assert true_preference(row["prompt"], row["chosen"]) > true_preference(row["prompt"], row["rejected"])
    for line in (out / "rankings.jsonl").open():
        row = json.loads(line)
        scores = [true_preference(row["prompt"], r) for r in row["responses"]]
        assert len(scores) == 3 and scores == sorted(set(scores), reverse=True)


def test_pretraining_documents_are_the_problem_then_what_follows_from_it(curated, tiny_tokenizer):
    """Each document's prompt holds the problem and nothing derived from it (no step, no answer), its
    completion the worked steps or the direct chat answer; joined they are the document as it was
    written before the pair form, and the tokenizer splits them where the text splits, so a base
    with `completion_only_loss` off trains on the same tokens as before."""
    _, out, _ = curated
    rows = [json.loads(line) for line in (out / "pretrain.jsonl").open()]
    plain = [r for r in rows if not r["prompt"].startswith("<|user|>")]
    chat = [r for r in rows if r["prompt"].startswith("<|user|>")]
    assert all(set(r) == {"prompt", "completion"} for r in rows) and plain and chat
    for r in plain:
        problem = r["prompt"].removesuffix(": ")
        assert r["prompt"] == problem + ": " and "=" not in problem
        assert r["completion"].split()[-1].split("=")[1] == str(ar.solve(*ar.parse(problem))[0])
    for r in chat:
        problem = r["prompt"].removeprefix("<|user|>").removesuffix("<|end|><|assistant|>")
        answer = ar.solve(*ar.parse(problem))[0]
        assert r["prompt"] + r["completion"] == chat_text(problem, f"<answer>{answer}</answer>")
    assert plain_text(ar.Problem("7+3*4", 19, ("3*4=12", "7+12=19"), 2)) == "7+3*4: 3*4=12 7+12=19"
    ids = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert all(ids(r["prompt"]) + ids(r["completion"]) == ids(r["prompt"] + r["completion"]) for r in rows)


def test_chat_text_matches_the_tokenizer_template(tiny_tokenizer):
    messages = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "<answer>3</answer>"}]
    assert tiny_tokenizer.apply_chat_template(messages, tokenize=False) == chat_text("1+2", "<answer>3</answer>")


def test_level_weights_shift_the_mix_and_default_to_uniform():
    uniform = ar.generate(3, 4000, [1, 2, 3, 4], heldout=False, distinct=False)
    assert uniform == ar.generate(3, 4000, [1, 2, 3, 4], heldout=False, distinct=False, weights={})
    assert uniform == ar.generate(3, 4000, [1, 2, 3, 4], heldout=False, distinct=False, weights={2: 1})
    weighted = ar.generate(3, 4000, [1, 2, 3, 4], heldout=False, distinct=False, weights={4: 3})
    share = lambda ps, lv: sum(p.level == lv for p in ps) / len(ps)  # noqa: E731
    assert abs(share(uniform, 4) - 0.25) < 0.03
    assert abs(share(weighted, 4) - 0.5) < 0.03  # 3 of 6 shares
    assert abs(share(weighted, 1) - 1 / 6) < 0.03
    for bad in ({5: 1}, {4: 0}, {3: 2}):
        with pytest.raises(ValueError, match="weights"):
            ar.generate(3, 10, [1, 2, 4], heldout=False, weights=bad)


def test_pretrain_level_weights_change_only_the_pretraining_file(tmp_path):
    small = dict(n_pretrain=400, n_cold_start=20, n_rl=40, n_general=20, n_preferences=20, n_rankings=10,
                 n_align=20, n_eval=20, n_pref_eval=20)
    build(DataConfig(**small), tmp_path / "uniform")
    build(DataConfig(**small, pretrain_level_weights={4: 3}), tmp_path / "weighted")
    differ = [f for f in FILES if (tmp_path / "uniform" / f).read_bytes() != (tmp_path / "weighted" / f).read_bytes()]
    assert differ == ["pretrain.jsonl"]
    with pytest.raises(ValueError, match="pretrain_level_weights"):
        DataConfig(levels=[1, 2], pretrain_level_weights={4: 3})
