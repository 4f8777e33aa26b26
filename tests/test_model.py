import torch

from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.model import PARAM_GROUPS, build_model, group_param_counts, param_group


def test_paper_model_has_104k_parameters_and_66k_attention():
    model = build_model(ModelConfig(), seed=0)
    counts = group_param_counts(model)
    assert sum(p.numel() for p in model.parameters()) == 104_204
    assert counts["attention"] == 3 * 128 * 128 + 3 * 128 + 128 * 128 + 128 == 66_048
    assert counts == {"embeddings": 2816, "attention": 66048, "mlp": 33024, "norms": 768, "unembedding": 1548}


def test_every_parameter_has_exactly_one_group(tiny_model):
    for name, _ in tiny_model.named_parameters():
        assert param_group(name) in PARAM_GROUPS


def test_forward_shape_and_causality(tiny_model, tiny_model_cfg):
    tokens = torch.randint(0, 12, (3, 7))
    logits = tiny_model(tokens)
    assert logits.shape == (3, 7, tiny_model_cfg.d_vocab)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 12
    assert torch.allclose(tiny_model(changed)[:, :5], logits[:, :5], atol=1e-6)
    assert not torch.allclose(tiny_model(changed)[:, 5:], logits[:, 5:])


def test_attention_matches_torch_fused_attention(tiny_model):
    x = torch.randn(4, 6, 16)
    attn = tiny_model.attn
    out, pattern, _ = attn(x)
    q, k, v = (t.view(4, 6, 2, 8).transpose(1, 2) for t in attn.W_QKV(x).split(16, dim=-1))
    z = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, attn.W_O(z.transpose(1, 2).reshape(4, 6, 16)), atol=1e-5)
    tokens = torch.randint(0, 12, (4, 6))
    logits, pattern = tiny_model(tokens, return_pattern=True)
    assert torch.allclose(logits, tiny_model(tokens), atol=1e-6)
    assert pattern.shape == (4, 2, 6, 6)
    assert torch.allclose(pattern.sum(-1), torch.ones(4, 2, 6), atol=1e-6)
    assert torch.all(pattern.triu(diagonal=1) == 0)


def test_build_model_is_seeded_and_leaves_global_rng_alone(tiny_model_cfg):
    state = torch.random.get_rng_state()
    a, b, c = (build_model(tiny_model_cfg, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name


def test_too_long_sequence_is_a_clear_error(tiny_model):
    import pytest

    with pytest.raises(ValueError, match="n_ctx=8"):
        tiny_model(torch.zeros(1, 9, dtype=torch.long))
