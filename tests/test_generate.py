import numpy as np
import pytest
import torch

from dpo_toolkit.core.data import END, PAD, encode_prompt
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.generate import greedy_answers, greedy_sequences, sample_responses
from dpo_toolkit.core.model import build_model


@pytest.fixture
def three(tiny_model_cfg):
    return [build_model(tiny_model_cfg, seed=s) for s in range(3)]


def full_recompute_decode(model, prompts: np.ndarray, seed: int | None):
    """The decoding loop before the key/value cache: the whole prefix recomputed at every token.
    Returns tokens (n, n_ctx), right-padded, and the response mask."""
    n_ctx = model.cfg.n_ctx
    uniforms = None
    if seed is not None:
        uniforms = torch.rand((len(prompts), n_ctx), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tokens = torch.full((len(prompts), n_ctx), PAD)
    mask = torch.zeros((len(prompts), n_ctx), dtype=torch.bool)
    for i, s in enumerate(prompts.tolist()):
        seq = encode_prompt(int(s))
        tokens[i, : len(seq)] = torch.tensor(seq)
        for t in range(len(seq), n_ctx):
            logits = model(torch.tensor([seq]))[0, -1]
            if uniforms is None:
                token = int(logits.argmax())
            else:
                cdf = logits.double().softmax(-1).cumsum(-1)
                token = min(int((cdf < uniforms[i, t]).sum()), len(cdf) - 1)
            seq.append(token)
            tokens[i, t], mask[i, t] = token, True
            if token == END:
                break
    return tokens, mask


def test_extend_in_pieces_equals_one_forward_pass(tiny_model, three):
    tokens = torch.randint(0, 12, (5, 8))
    logits = tiny_model(tokens)  # (5, 8, V)
    first, cache = tiny_model.extend(tokens[:, :3])
    pieces = [first]
    for t in range(3, 8):
        step, cache = tiny_model.extend(tokens[:, t : t + 1], cache)
        pieces.append(step)
    assert cache[0].shape == (5, 2, 8, 8)  # (batch, heads, positions, d_head)
    assert torch.allclose(torch.cat(pieces, dim=1), logits, atol=1e-5)
    # an ensemble extends each model with its own cache
    ensemble = Ensemble(three)
    batched, cache = ensemble.extend(tokens[None, :, :4].expand(3, -1, -1))
    batched_next, _ = ensemble.extend(tokens[None, :, 4:6].expand(3, -1, -1), cache)
    for m, model in enumerate(three):
        assert torch.allclose(torch.cat([batched[m], batched_next[m]], dim=1), model(tokens[:, :6]), atol=1e-5)
    with pytest.raises(ValueError, match="n_ctx=8"):
        tiny_model.extend(tokens[:, :1], tiny_model.extend(tokens)[1])  # a ninth position


def test_cached_decoding_equals_full_recompute(three):
    prompts = np.array([1, 7, 12, 19, 3, 15])
    for model in three:
        tokens, mask = full_recompute_decode(model, prompts, seed=None)
        greedy = greedy_sequences(model, prompts)
        assert torch.equal(greedy.tokens, tokens) and torch.equal(greedy.response_mask, mask)
    # sampled: prompt-major rows, each with its own uniforms, the same draws for every model of an ensemble
    repeated = np.repeat(prompts, 4)
    samples = sample_responses(Ensemble(three), prompts, 4, seed=5)
    for m, model in enumerate(three):
        tokens, mask = full_recompute_decode(model, repeated, seed=5)
        assert torch.equal(samples.tokens[m], tokens) and torch.equal(samples.response_mask[m], mask)
    assert greedy_answers(Ensemble(three), prompts) == [greedy_answers(m, prompts) for m in three]
