import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from components.config import ArchConfig
from components.modeling.pruning import PruningError, importance, prune, top_k

TEACHER = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)


def teacher(config_class=LlamaConfig, model_class=LlamaForCausalLM, **overrides):
    torch.manual_seed(0)
    return model_class(config_class(**(TEACHER | overrides))).eval()


def batch(n=6, t=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 8:] = 0  # a padded row: its tail is not scored
    return ids, mask


def halves(ids, mask):
    return [(ids[:3], mask[:3]), (ids[3:], mask[3:])]


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def arch(hidden=32, heads=4, ffn=64, layers=4):
    return ArchConfig(hidden_size=hidden, num_heads=heads, intermediate_size=ffn, num_layers=layers)


def test_top_k_keeps_the_largest_in_index_order_and_breaks_ties_low():
    assert top_k(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2).tolist() == [1, 3]
    assert top_k(torch.tensor([0.2, 0.2, 0.2]), 2).tolist() == [0, 1]


def test_scores_are_means_over_every_valid_token_of_all_batches():
    model, (ids, mask) = teacher(), batch()
    whole, split = importance(model, [(ids, mask)]), importance(model, halves(ids, mask))
    retyped = ids.clone()
    retyped[0, 8:] = (retyped[0, 8:] + 1) % 40  # other tokens under the padding mask
    padded = importance(model, [(retyped, mask)])
    for a, b, c in ((whole.hidden, split.hidden, padded.hidden), (whole.layers, split.layers, padded.layers),
                    (whole.groups[1], split.groups[1], padded.groups[1]), (whole.neurons[3], split.neurons[3],
                                                                            padded.neurons[3])):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    with pytest.raises(PruningError, match="no calibration tokens"):
        importance(model, [(ids, torch.zeros_like(mask))])


def test_pruning_to_the_same_shape_is_the_teacher_exactly():
    model, (ids, mask) = teacher(), batch()
    student, _ = prune(model, arch(), halves(ids, mask))
    assert torch.allclose(logits(student, ids, mask), logits(model, ids, mask), atol=1e-5)


def test_cut_parts_that_do_nothing_leave_the_output_unchanged():
    """A dead layer (zero output projections), a silent head and dead neurons are what gets cut, and
    cutting them changes nothing: each is scored by what it adds, not by its weights' size."""
    model, (ids, mask) = teacher(), batch()
    layers = model.model.layers
    with torch.no_grad():
        layers[2].self_attn.o_proj.weight.zero_()
        layers[2].mlp.down_proj.weight.zero_()        # layer 2 is the identity: block influence 0
        layers[0].self_attn.v_proj.weight[8:16] = 0   # head 1 of layer 0 outputs zeros
        for layer in layers:
            layer.mlp.up_proj.weight[:16] = 0         # neurons 0-15 are dead everywhere
    scores = importance(model, halves(ids, mask))
    assert scores.layers[2] == pytest.approx(0, abs=1e-6) and scores.layers.argmin() == 2
    assert scores.groups[0].argmin() == 1 and scores.neurons[1][:16].abs().max() == 0
    student, cut = prune(model, arch(heads=4, ffn=48, layers=3), halves(ids, mask))
    assert student.config.num_hidden_layers == 3 and student.config.intermediate_size == 48
    assert cut.summary() == "layers 0, 1, 3 of 4, 32 of 32 channels, 4 of 4 heads, 48 of 64 neurons a layer"
    assert torch.allclose(logits(student, ids, mask), logits(model, ids, mask), atol=1e-5)


def silence_and_cut(layer: int, rows: slice, shape: dict, **overrides):
    """A teacher whose value rows `rows` of layer `layer` are zero (a silent head or key/value group),
    cut to `shape`: (that layer's teacher attention, the student, the kept hidden channels)."""
    model, (ids, mask) = teacher(**overrides), batch()
    with torch.no_grad():
        model.model.layers[layer].self_attn.v_proj.weight[rows] = 0
    student, _ = prune(model, arch(**shape), halves(ids, mask))
    kept_hidden = top_k(importance(model, halves(ids, mask)).hidden, shape["hidden"])
    return model.model.layers[layer].self_attn, student, kept_hidden


def test_cutting_a_head_keeps_the_head_width_and_the_other_heads_weights():
    attention, student, kept_hidden = silence_and_cut(0, slice(16, 24), dict(hidden=24, heads=3))  # head 2 is silent
    assert (student.config.head_dim, student.config.num_attention_heads) == (8, 3)
    q_teacher = attention.q_proj.weight
    expected = torch.cat([q_teacher[0:16], q_teacher[24:32]])[:, kept_hidden]  # heads 0, 1, 3; the kept channels
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight, expected)
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()


def test_grouped_query_attention_keeps_whole_groups():
    # groups {0, 1} and {2, 3}; group 0 of layer 1 is silent
    attention, student, kept_hidden = silence_and_cut(1, slice(0, 8), dict(hidden=16, heads=2), num_key_value_heads=2)
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 1)
    assert torch.equal(student.model.layers[1].self_attn.k_proj.weight, attention.k_proj.weight[8:16][:, kept_hidden])
    ids, mask = batch()
    assert logits(student, ids, mask).shape == (6, 12, 40)  # it runs at the new shapes


def test_biases_are_sliced_with_their_projections():
    model, (ids, mask) = teacher(Qwen2Config, Qwen2ForCausalLM), batch()
    student, _ = prune(model, arch(), halves(ids, mask))
    assert isinstance(student, Qwen2ForCausalLM) and student.model.layers[0].self_attn.q_proj.bias is not None
    assert torch.allclose(logits(student, ids, mask), logits(model, ids, mask), atol=1e-5)


@pytest.mark.parametrize("shape, field", [
    (dict(hidden=30, heads=3), "hidden_size: 30 is not a whole number"),
    (dict(hidden=24, heads=4), "num_heads: 4 heads of hidden_size 24"),
    (dict(ffn=128), "intermediate_size: 128 is larger than the teacher's 64"),
    (dict(layers=5), "num_layers: 5 is larger than the teacher's 4"),
])
def test_shapes_that_cannot_be_cut_out_are_refused_by_field(shape, field):
    model, (ids, mask) = teacher(), batch()
    with pytest.raises(PruningError, match=field):
        prune(model, arch(**shape), halves(ids, mask))


def test_a_model_of_another_shape_is_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(PruningError, match="cannot prune a GPT2LMHeadModel: pruning supports Llama-shaped decoders"):
        prune(model, arch(), halves(*batch()))


def test_the_teacher_is_left_as_it_was():
    model, (ids, mask) = teacher(), batch()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, arch(hidden=24, heads=3, ffn=32, layers=2), halves(ids, mask))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
