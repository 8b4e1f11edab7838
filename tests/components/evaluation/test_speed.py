"""Generation speed: warm-up runs are not timed, the result is the median of the timed runs."""
import pytest

from components.data.prompts import render_prompt
from components.evaluation.speed import generation_speed
from components.generation import Rollout


class TimedEngine:
    """Generates 10 tokens per prompt and reports the next wall time from a script."""

    def __init__(self, walls):
        self.walls, self.calls = list(walls), []

    def generate(self, prompts, params, progress=False):
        self.calls.append((list(prompts), params))
        ids = [[1] * 10 for _ in prompts for _ in range(params.n)]
        return Rollout(prompt_ids=[[0]] * len(ids), completion_ids=ids, logprobs=[[0.0] * 10] * len(ids),
                       texts=[""] * len(ids), finish_reasons=["length"] * len(ids),
                       prompt_index=[i // params.n for i in range(len(ids))],
                       num_generated_tokens=10 * len(ids), wall_time_s=self.walls.pop(0))


def test_median_of_timed_runs_after_warmup(tiny_tokenizer):
    engine = TimedEngine([100.0, 1.0, 4.0, 2.0])  # the first (warm-up) run is slow and ignored
    r = generation_speed(None, tiny_tokenizer, ["1+2", "3+4"], n=2, max_new_tokens=10, seed=7, repeats=3,
                         warmup=1, system_prompt="S", engine=engine)
    assert r.runs == [40.0, 10.0, 20.0] and r.tokens_per_s == 20.0 and r.seconds == 2.0
    assert (r.tokens, r.sequences) == (40, 4)
    prompts, params = engine.calls[0]
    assert prompts == [render_prompt(tiny_tokenizer, p, "S") for p in ("1+2", "3+4")]
    assert (params.n, params.max_new_tokens, params.seed) == (2, 10, 7) and len(engine.calls) == 4
    assert r.as_metrics("student/") == {"student/tokens_per_s": 20.0, "student/generation_s": 2.0,
                                        "student/generated_tokens": 40.0}


def test_real_engine_repeats_generate_the_same_tokens(tiny_model, tiny_tokenizer, single_thread):
    r = generation_speed(tiny_model, tiny_tokenizer, ["1+2", "3*4"], n=4, max_new_tokens=8, repeats=2, warmup=0)
    assert r.tokens_per_s > 0 and 8 <= r.tokens <= 64 and r.sequences == 8 and len(r.runs) == 2


@pytest.mark.parametrize("kw, match", [({"prompts": []}, "prompts is empty"), ({"repeats": 0}, "repeats >= 1")])
def test_bad_arguments(tiny_tokenizer, kw, match):
    with pytest.raises(ValueError, match=match):
        generation_speed(None, tiny_tokenizer, **{"prompts": ["1+2"], **kw}, engine=TimedEngine([]))
