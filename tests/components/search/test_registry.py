"""What each strategy asks of its Toolkit, known before any model loads (`r1flow tts` checks it up front)."""
import pytest

from components.search import STRATEGIES


class _Stop(Exception):
    """Raised by every fake callable: the strategy got past its own checks."""


def _stop(*args, **kwargs):
    raise _Stop


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"compute_optimal"}))  # its arms are fitted at run time
def test_verifiers_needed_is_what_each_strategy_asks_its_toolkit_for(name):
    from components.search.base import Query, Toolkit
    from components.search.registry import verifiers_needed

    asked = set()
    for missing in ("score", "score_steps"):
        given = {v: _stop for v in ("score", "score_steps") if v != missing}
        tools = Toolkit(generate=_stop, critique=_stop, revise=_stop, merge=_stop, **given)
        try:
            STRATEGIES[name]([Query("p", "h")], tools, 1 if name in ("greedy", "cot") else 4)
        except _Stop:
            pass
        except ValueError as e:
            assert f"needs a `{missing}` callable" in str(e), e
            asked.add(missing)
    assert asked == verifiers_needed(name, {})
