"""Steps of a completion: lossless split, offsets, the final answer step."""
import pytest

from components.data.steps import is_final, split_steps, step_ends


def test_split_keeps_every_character_and_ends_with_the_answer_step():
    c = "<think>3*4=12 7+12=19 19-2=17</think><answer>17</answer>"
    steps = split_steps(c)
    assert steps == ["<think>3*4=12 ", "7+12=19 ", "19-2=17", "</think><answer>17</answer>"]
    assert "".join(steps) == c
    assert [is_final(s) for s in steps] == [False, False, False, True]
    assert step_ends(c) == [14, 22, 29, len(c)]


def test_unfinished_text_and_separator_runs():
    assert split_steps("<think>1+2=3 3*3=") == ["<think>1+2=3 ", "3*3="]
    assert split_steps("a  b") == ["a  ", "b"]
    assert split_steps("") == []
    assert split_steps("x\n\ny\n\n</think>ok", sep="\n\n") == ["x\n\n", "y\n\n", "</think>ok"]
    with pytest.raises(ValueError, match="sep"):
        split_steps("a b", sep="")
