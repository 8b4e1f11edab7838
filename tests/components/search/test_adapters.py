"""Adapters from real (tiny) models to the search callables, and their conventions."""
from __future__ import annotations

import pytest
import torch

from components.data.prompts import render_prompt
from components.data.steps import split_steps
from components.generation import PrefixCache, SamplingParams, TransformersEngine
from components.search import SearchConfig, Toolkit, get_strategy
from components.search.base import sigmoid
from components.search.policy import FeedbackTemplates, PolicyFeedback, PolicyGenerator, make_queries, make_toolkit
from components.search.verifiers import OutcomeVerifier, ProcessVerifier, step_token_positions, vote_share

pytestmark = pytest.mark.usefixtures("single_thread")
SOLUTION = "<think>3*4=12 7+12=19</think><answer>19</answer>"


def test_policy_generator_matches_the_engine(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    gen = PolicyGenerator(engine)
    qs = make_queries(tiny_tokenizer, ["7+3*4", "1+2"])
    assert qs[0].head == render_prompt(tiny_tokenizer, "7+3*4") and qs[0].prompt == "7+3*4"
    out = gen([q.head for q in qs], 3, max_new_tokens=8, temperature=1.0, stop=(" ",), seed=4)
    r = engine.generate([q.head for q in qs], SamplingParams(n=3, max_new_tokens=8, temperature=1.0, stop=(" ",),
                                                             seed=4))
    assert [len(g) for g in out] == [3, 3]
    flat = [c for g in out for c in g]
    assert [c.text for c in flat] == r.texts and [c.finish_reason for c in flat] == r.finish_reasons
    assert [c.num_tokens for c in flat] == [len(x) for x in r.completion_ids]
    assert flat[0].mean_logprob == pytest.approx(sum(r.logprobs[0]) / len(r.logprobs[0]))
    assert gen.generated_tokens == r.num_generated_tokens and gen.cached_tokens == 0
    with pytest.raises(ValueError, match="TransformersEngine"):
        PolicyGenerator(object(), prefix_cache=PrefixCache())


def test_tree_search_reuses_prefix_kv_with_the_same_results(tiny_model, tiny_tokenizer, tiny_prm):
    qs = make_queries(tiny_tokenizer, ["7+3*4", "1+2", "9-3*2"])
    cfg = SearchConfig(max_new_tokens=24, step_tokens=8, max_steps=3, temperature=1.0, seed=3)
    prm = ProcessVerifier(tiny_prm, tiny_tokenizer)
    runs = {}
    for reuse in (False, True):
        gen = PolicyGenerator(TransformersEngine(tiny_model, tiny_tokenizer),
                              prefix_cache=PrefixCache() if reuse else None)
        res = get_strategy("beam_search")(qs, Toolkit(generate=gen, score_steps=prm, cfg=cfg), 4, width=2)
        runs[reuse] = (res, gen)
    (plain, g0), (cached, g1) = runs[False], runs[True]
    assert [(r.completion, r.compute) for r in cached] == [(r.completion, r.compute) for r in plain]
    assert g1.prefill_tokens + g1.cached_tokens == g0.prefill_tokens  # the same prompts were asked for
    assert g1.prefill_tokens < 0.6 * g0.prefill_tokens, (g1.prefill_tokens, g0.prefill_tokens)


def test_outcome_verifier_reads_the_last_token_of_prompt_plus_completion(tiny_orm, tiny_tokenizer):
    orm = OutcomeVerifier(tiny_orm, tiny_tokenizer, batch_size=2)
    prompts, comps = ["7+3*4", "1+2", "7+3*4"], [SOLUTION, "<think>1+2=3</think><answer>3</answer>", "x"]
    scores = orm(prompts, comps)
    for p, c, s in zip(prompts, comps, scores):  # each alone, unpadded, pooled by hand at the last position
        ids = tiny_tokenizer(render_prompt(tiny_tokenizer, p) + c, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            hidden = tiny_orm.model(input_ids=ids.input_ids).last_hidden_state
            assert s == pytest.approx(float(tiny_orm.score(hidden)[0, -1, 0]), abs=1e-5)
    with pytest.raises(ValueError, match="completions"):
        orm(prompts, comps[:1])


def test_process_verifier_scores_the_last_token_of_each_step(tiny_prm, tiny_tokenizer):
    prm = ProcessVerifier(tiny_prm, tiny_tokenizer, batch_size=2)
    head = render_prompt(tiny_tokenizer, "7+3*4")
    enc = tiny_tokenizer(head + SOLUTION, add_special_tokens=False, return_offsets_mapping=True)
    steps = split_steps(SOLUTION, " ")
    positions = step_token_positions(enc.offset_mapping, len(head), steps)
    pieces = [tiny_tokenizer.convert_ids_to_tokens(enc.input_ids[p]) for p in positions]
    assert pieces == [" ", "9", "</answer>"]  # "<think>3*4=12 " | "7+12=19" | "</think><answer>19</answer>"
    partials = [steps, steps[:2], ["<think>1+2=3", "</think><answer>3</answer>"]]
    scores = prm(["7+3*4", "7+3*4", "1+2"], partials)
    with torch.no_grad():
        logits = tiny_prm(input_ids=torch.tensor([enc.input_ids])).logits[0, :, 0]
    assert scores[0] == pytest.approx(torch.sigmoid(logits[positions]).tolist(), abs=1e-5)
    assert scores[1] == pytest.approx(scores[0][:2], abs=1e-5)  # a prefix scores its steps the same
    assert len(scores[2]) == 2 and all(0 < s < 1 for s in scores[2])
    value = ProcessVerifier(tiny_prm, tiny_tokenizer, activation="identity")(["7+3*4"], [steps])
    assert value[0] == pytest.approx(logits[positions].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="activation"):
        ProcessVerifier(tiny_prm, tiny_tokenizer, activation="tanh")


def test_vote_share_by_hand():
    a = "<answer>5</answer>"
    scores = vote_share(["p", "p", "p", "p", "q"], [a, a, "<answer>7</answer>", "none", a])
    assert [sigmoid(s) for s in scores] == pytest.approx([0.5, 0.5, 0.25, 0.0, 1.0], abs=1e-5)  # logits


def test_policy_feedback_renders_its_templates(tiny_tokenizer):
    asked = []

    def gen(prefixes, n, **kw):
        asked.extend(prefixes)
        from components.search import Candidate

        return [[Candidate("ok", 1, "eos")] for _ in prefixes]

    fb = PolicyFeedback(gen, tiny_tokenizer)
    fb.critique(["1+2"], ["<answer>3</answer>"])
    fb.revise(["1+2"], ["<answer>4</answer>"], ["VERDICT: wrong"])
    fb.merge(["1+2"], [["<think>1+2=3 ", "<think>1+2=4 "]])
    t = FeedbackTemplates()
    assert asked[0] == render_prompt(tiny_tokenizer, t.critique.format(problem="1+2", solution="<answer>3</answer>"))
    assert "Feedback: VERDICT: wrong" in asked[1]
    assert "1. <think>1+2=3 \n2. <think>1+2=4 " in asked[2]
    with pytest.raises(ValueError, match="feedback"):
        FeedbackTemplates(revise="Problem: {problem} {solution}")


def test_make_toolkit_wires_the_policy_and_verifiers(tiny_model, tiny_tokenizer, tiny_orm):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    orm = OutcomeVerifier(tiny_orm, tiny_tokenizer)
    t = make_toolkit(engine, tiny_tokenizer, SearchConfig(max_new_tokens=8), score=orm)
    assert isinstance(t.generate, PolicyGenerator) and isinstance(t.generate.prefix_cache, PrefixCache)
    assert t.score is orm and t.score_steps is None and t.cfg.max_new_tokens == 8
    assert t.critique.__self__.generate is t.generate  # feedback is the same policy, counted alike
    assert make_toolkit(engine, tiny_tokenizer, SearchConfig(), reuse_prefixes=False).generate.prefix_cache is None
