"""The fact probe: teacher-forced step results, counted per step and per problem."""
import pytest
import torch

from components.data import arithmetic as ar
from components.data.curate import plain_text
from components.evaluation.facts import step_facts, summarize
from components.modeling.tokenizer import train_tokenizer

PROBLEMS = [ar.Problem("7+3*4", 19, ("3*4=12", "7+12=19"), 2), ar.Problem("5-19", -14, ("5-19=-14",), 4)]


class Oracle(torch.nn.Module):
    """Predicts the gold next token everywhere, except (optionally) one position."""

    def __init__(self, tokenizer, wrong_at: tuple[str, int] | None = None):
        super().__init__()
        self.tokenizer, self.wrong_at, self.p = tokenizer, wrong_at, torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.p.device

    def forward(self, ids):
        ids = ids[0].tolist()
        logits = torch.zeros(1, len(ids), len(self.tokenizer))
        for i in range(len(ids) - 1):
            logits[0, i, ids[i + 1]] = 1.0
        text = self.tokenizer.decode(ids)
        if self.wrong_at and self.wrong_at[0] == text:
            logits[0, self.wrong_at[1], :] = 0
            logits[0, self.wrong_at[1], (ids[self.wrong_at[1] + 1] + 1) % len(self.tokenizer)] = 1.0
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([plain_text(p) for p in ar.generate(0, 300, [1, 2, 3, 4], heldout=False)] * 3)


def test_a_model_that_predicts_every_token_knows_every_fact(tokenizer):
    facts = step_facts(Oracle(tokenizer), tokenizer, PROBLEMS)
    assert [[(f.op, f.large, f.known) for f in fs] for fs in facts] == [
        [("*", False, True), ("+", True, True)], [("-", True, True)]]
    s = summarize(facts)
    assert s["steps"] == s["problems"] == 1.0 and s["problems/level_4"] == 1.0


def test_one_wrong_result_token_fails_that_step_and_its_problem_only(tokenizer):
    text = plain_text(PROBLEMS[0])  # "7+3*4: 3*4=12 7+12=19"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    last_digit = len(ids) - 1  # the "9" of 19: predicted at the position before it
    facts = step_facts(Oracle(tokenizer, wrong_at=(tokenizer.decode(ids), last_digit - 1)), tokenizer, PROBLEMS)
    assert [f.known for f in facts[0]] == [True, False] and facts[1][0].known
    s = summarize(facts)
    assert s["steps"] == pytest.approx(2 / 3) and s["problems"] == 0.5
    assert s["steps/+/large"] == 0.0 and s["steps/*/small"] == 1.0 and s["problems/level_2"] == 0.0


def test_a_wrong_token_outside_the_results_does_not_count(tokenizer):
    text = plain_text(PROBLEMS[0])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    facts = step_facts(Oracle(tokenizer, wrong_at=(tokenizer.decode(ids), 0)), tokenizer, PROBLEMS)  # the "+" of 7+3
    assert all(f.known for fs in facts for f in fs)
