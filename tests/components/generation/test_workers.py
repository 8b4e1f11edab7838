"""Helper processes that decode batches beside the caller (`rollout.workers`, components/generation/workers.py).

One engine with a helper is made for the module (a helper is a fresh interpreter that imports
torch and transformers: a few seconds on 2 busy cores) and compared with the in-process engine
on the same model: the same tokens, texts, finish reasons and prefill counts, the helper having
decoded some of the batches; weights changed in place between calls reach the helper; a helper
that dies or fails raises in the caller; helpers stop on `close()` and when their parent is
killed with SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from components.config import RolloutConfig
from components.generation import SamplingParams, TransformersEngine, make_engine
from components.generation.workers import WorkerError

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pooled(model, tok):
    engine = make_engine("transformers", model, tok, **RolloutConfig(batch_size=4, workers=2).engine_kwargs())
    assert engine._pool.wait_ready(timeout=120), "the helper did not start"
    yield engine
    engine.close()


def prompts(tok, k: int = 6) -> list[str]:
    texts = ["1+2", "12+3*4-5=?", "7", "3*4+1", "9-8", "2*2*2"][:k]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


@pytest.mark.parametrize("params", [SamplingParams(n=4, temperature=1.5, max_new_tokens=24, seed=3),
                                    SamplingParams(n=1, temperature=0.0, max_new_tokens=16)], ids=["sampled", "greedy"])
def test_a_helper_decodes_some_batches_and_the_samples_are_one_process_samples(model, tok, pooled, params):
    before = pooled._pool.helper_batches
    got = pooled.generate(prompts(tok), params)
    want = TransformersEngine(model, tok, batch_size=4).generate(prompts(tok), params)
    assert pooled._pool.helper_batches > before, "the helper decoded none of the batches"
    assert got.completion_ids == want.completion_ids and got.texts == want.texts
    assert got.finish_reasons == want.finish_reasons and got.prompt_index == want.prompt_index
    assert got.num_prefill_tokens == want.num_prefill_tokens > 0
    torch.testing.assert_close(torch.tensor(sum(got.logprobs, [])), torch.tensor(sum(want.logprobs, [])),
                               atol=1e-5, rtol=0)


def test_weights_changed_between_calls_reach_the_helper(model, tok, pooled):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=11)
    old = pooled.generate(prompts(tok), params)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # in place, as an optimizer step does
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        new = pooled.generate(prompts(tok), params)
        want = TransformersEngine(model, tok, batch_size=4).generate(prompts(tok), params)
    finally:
        model.load_state_dict(saved)
    assert new.completion_ids == want.completion_ids != old.completion_ids


def test_a_dead_helper_is_an_error_in_the_caller(model, tok):
    engine = TransformersEngine(model, tok, batch_size=4, workers=2)
    try:
        assert engine._pool.wait_ready(timeout=120)
        helper = engine._pool.helpers[0]
        helper.proc.kill()
        helper.proc.wait()
        with pytest.raises(WorkerError, match=rf"rollout worker \(pid {helper.proc.pid}\) died \(exit code -9\)"):
            engine.generate(prompts(tok), SamplingParams(n=4, max_new_tokens=8, seed=0))
    finally:
        engine.close()


def test_an_error_in_a_helper_is_raised_in_the_caller_with_its_traceback(tok, pooled):
    # the longest prompt's batch goes to the helper first; only that prompt holds a token id
    # past the vocabulary, so only the helper fails
    good = tok("1+2", add_special_tokens=False)["input_ids"]
    bad = good * 4 + [len(tok) + 1000]
    with pytest.raises(WorkerError, match=r"(?s)failed:.*IndexError"):
        pooled.generate([bad, good], SamplingParams(n=4, max_new_tokens=4, seed=0))
    again = pooled.generate([good, good], SamplingParams(n=4, max_new_tokens=4, seed=0))  # still serves
    assert len(again.completion_ids) == 8


def test_close_stops_the_helpers_and_bad_values_are_refused(model, tok):
    engine = TransformersEngine(model, tok, workers=2)
    procs = [h.proc for h in engine._pool.helpers]
    engine.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        TransformersEngine(model, tok, workers=0)
    with pytest.raises(ValueError, match="less than or equal to 64"):
        RolloutConfig(workers=65)
    with pytest.raises(ValueError, match="the vllm backend runs its own, so leave workers at 1"):
        RolloutConfig(backend="vllm", workers=2)


def test_helpers_exit_when_their_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import sys, time, torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from components.generation import TransformersEngine
        from components.modeling.tokenizer import train_tokenizer
        tok = train_tokenizer(["1+2=3"] * 4)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        engine = TransformersEngine(model, tok, workers=2)
        assert engine._pool.wait_ready(timeout=120)
        print(engine._pool.helpers[0].proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        helper = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and alive(helper):
            time.sleep(0.1)
        assert not alive(helper), "the helper outlived its killed parent"
    finally:
        parent.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_a_lora_policy_is_sampled_with_its_adapters_merged(model, tok):
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # adapters that change the samples (B starts at zero)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    lora.eval()
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=2)
    engine = TransformersEngine(lora, tok, batch_size=4, workers=2)
    try:
        assert engine._pool.wait_ready(timeout=120)
        got = engine.generate(prompts(tok), params)
        assert engine._pool.helper_batches > 0
    finally:
        engine.close()
    want = TransformersEngine(lora, tok, batch_size=4).generate(prompts(tok), params)
    plain = TransformersEngine(model, tok, batch_size=4).generate(prompts(tok), params)
    assert got.completion_ids == want.completion_ids != plain.completion_ids


def test_a_function_that_makes_its_engine_stops_its_helpers_before_it_returns_or_raises(model, tok, monkeypatch):
    """The helpers of an engine made inside `evaluate` stop when it raises after sampling, although the
    exception's traceback (held here) still references the function's frame."""
    from components.evaluation.accuracy import evaluate
    from components.generation import workers

    pools, init = [], workers.WorkerPool.__init__

    def recorded(self, *args, **kwargs):
        pools.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(workers.WorkerPool, "__init__", recorded)
    rows = [{"prompt": "1+2", "answer": 3}]
    with pytest.raises(ValueError, match="unknown reward 'no-such-check'") as raised:
        evaluate(model, tok, rows, max_new_tokens=4, rollout=RolloutConfig(workers=2), correctness="no-such-check")
    assert raised.traceback and len(pools) == 1
    assert all(h.proc.poll() is not None for h in pools[0].helpers), "the helper outlived evaluate"


def test_owned_closes_the_engine_it_made_and_not_one_passed_in(model, tok):
    from components.generation import owned

    engine = TransformersEngine(model, tok, workers=2)
    with owned(engine, lambda: pytest.fail("made an engine although one was passed")) as e:
        assert e is engine
    assert all(h.proc.poll() is None for h in engine._pool.helpers), "a passed-in engine was closed"
    with owned(None, lambda: engine) as e:
        pass
    assert all(h.proc.poll() is not None for h in engine._pool.helpers)
