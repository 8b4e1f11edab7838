"""Reward-model building, loading and the score conventions the verifiers rely on."""
from __future__ import annotations

import pytest
import torch

from components.config import LoraConfig
from components.data.prompts import render_prompt
from components.modeling.models import ModelLoadError, save_model
from components.modeling.reward_models import (
    encode_outcome, encode_steps, load_reward_model, score_outcomes, score_steps)

pytestmark = pytest.mark.usefixtures("single_thread")

COMPLETION = "<think>3*4=12 12+7=19</think><answer>19</answer>"


@pytest.fixture()
def base_dir(tmp_path, tiny_model, tiny_tokenizer):
    save_model(tiny_model, tiny_tokenizer, tmp_path / "base")
    return str(tmp_path / "base")


def test_outcome_model_from_a_causal_checkpoint(base_dir, tiny_tokenizer):
    orm = load_reward_model(base_dir, "outcome", pad_token_id=tiny_tokenizer.pad_token_id, seed=3)
    assert type(orm).__name__ == "LlamaForSequenceClassification"
    assert orm.config.num_labels == 1 and orm.config.pad_token_id == tiny_tokenizer.pad_token_id
    again = load_reward_model(base_dir, "outcome", pad_token_id=tiny_tokenizer.pad_token_id, seed=3)
    assert torch.equal(orm.score.weight, again.score.weight), "the new head is seeded"
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(base_dir)
    assert torch.equal(orm.model.embed_tokens.weight, lm.model.embed_tokens.weight), "the checkpoint's backbone"


def test_outcome_score_is_the_logit_at_the_last_token(base_dir, tiny_tokenizer):
    tok = tiny_tokenizer
    orm = load_reward_model(base_dir, "outcome", pad_token_id=tok.pad_token_id)
    ids = encode_outcome(tok, "3*4+7", COMPLETION)
    assert tok.decode(ids) == render_prompt(tok, "3*4+7") + COMPLETION, "no EOS appended"
    orm.eval()
    with torch.no_grad():
        hidden = orm.model(input_ids=torch.tensor([ids])).last_hidden_state
        by_hand = orm.score(hidden[0, -1])[0].item()
    prompts, completions = ["3*4+7", "1+2", "9*9-1"], [COMPLETION, "<answer>3</answer>", "80"]
    batched = score_outcomes(orm, tok, prompts, completions, batch_size=3)  # padded together
    alone = [score_outcomes(orm, tok, [p], [c])[0] for p, c in zip(prompts, completions)]
    assert abs(batched[0] - by_hand) < 1e-5
    assert max(abs(a - b) for a, b in zip(batched, alone)) < 1e-5
    orm.train()
    score_outcomes(orm, tok, prompts[:1], completions[:1])
    assert orm.training, "scoring restores the train/eval mode"


def test_step_score_positions_by_hand(base_dir, tiny_tokenizer):
    """'<|user|>3*4+7<|end|><|assistant|>' is 8 tokens; the completion is one token per character
    except the tags: <think>=8 3 * 4 = 1 2 ' '=15 | 1 2 + 7 = 1 9=22 | </think>=23 <answer> 1 9 </answer>=27."""
    tok = tiny_tokenizer
    ids, positions = encode_steps(tok, "3*4+7", COMPLETION, sep=" ")
    assert positions == [15, 22, 27]
    assert tok.convert_ids_to_tokens([ids[p] for p in positions]) == [" ", "9", "</answer>"]
    prm = load_reward_model(base_dir, "process", pad_token_id=tok.pad_token_id)
    prm.eval()
    with torch.no_grad():
        expected = torch.sigmoid(prm(input_ids=torch.tensor([ids])).logits[0, positions, 0]).tolist()
    got = score_steps(prm, tok, ["3*4+7", "1+2", "5-5"], [COMPLETION, "<think>1+2=3</think><answer>3</answer>", ""])
    assert max(abs(a - b) for a, b in zip(got[0], expected)) < 1e-5
    assert len(got[1]) == 2 and got[2] == [], "an empty completion has no steps"


class WordTokenizer:
    """A fast-tokenizer stand-in whose offsets skip whitespace, like trimmed byte-level offsets."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "Q: " + messages[-1]["content"] + "\nA: "

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        import re

        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


def test_step_end_falls_back_to_the_last_token_before_an_uncovered_character():
    # "Q: 1+1\nA: " then "x=2 so\n\ny=3"; with sep "\n\n" the first step ends on '\n', which no token
    # covers: its score is read at "so", the last token starting before it.
    ids, positions = encode_steps(WordTokenizer(), "1+1", "x=2 so\n\ny=3", sep="\n\n")
    assert positions == [4, 5]  # tokens: Q: 1+1 A: x=2 so y=3


def test_lora_reward_model_trains_only_adapters_and_the_head(base_dir, tiny_tokenizer):
    prm = load_reward_model(base_dir, "process", pad_token_id=tiny_tokenizer.pad_token_id, finetune="lora",
                            lora=LoraConfig(r=2, alpha=4))
    trainable = [n for n, p in prm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    assert any("score" in n for n in trainable), "the new head must train under LoRA"


def test_bad_arguments_fail_clearly(base_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown reward model kind 'critic'; valid names: outcome, process"):
        load_reward_model(base_dir, "critic")
    with pytest.raises(ValueError, match="finetune: reward models train 'full' or 'lora'"):
        load_reward_model(base_dir, "outcome", finetune="qlora")
    with pytest.raises(ModelLoadError, match="'/nonexistent/rm' is not a directory"):
        load_reward_model("/nonexistent/rm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"cannot load a reward model \(outcome\) from"):
        load_reward_model(str(tmp_path / "empty"))
