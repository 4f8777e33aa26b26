"""The similarity sweep (likelihood_displacement.similarity): the synthetic unembedding holds π_ref fixed
while ⟨W_y+, W_y−⟩/‖W_y+‖² moves, the prediction matches its closed form, and small steps follow it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_toolkit.studies.likelihood_displacement.similarity import (
    gradient_descent,
    orthogonal_crossings,
    similarity_sweep,
    sweep_summary,
    synthetic_head,
)
from dpo_toolkit.studies.likelihood_displacement.theory import first_order_terms

P_POS, P_NEG, Q, BETA = 0.5, 0.1, 0.5, 0.1


@pytest.mark.parametrize("ratio", [0.0, 1.0, 2.5])
def test_the_synthetic_head_sets_the_ratio_and_holds_pi_ref(ratio):
    h, W, bias = synthetic_head(ratio, Q, n_other=10, dim=16, seed=3, p_pos=P_POS, p_neg=P_NEG)
    assert float(W[0] @ W[1] / (W[0] @ W[0])) == pytest.approx(ratio, abs=1e-12)
    pi_ref = (W @ h + bias).softmax(-1)
    assert pi_ref[:2].tolist() == pytest.approx([P_POS, P_NEG], abs=1e-12)
    assert pi_ref[2:].tolist() == pytest.approx([0.04] * 10, abs=1e-12)


def test_the_frozen_prediction_has_its_closed_form_and_changes_sign_between_the_roots():
    low, high = orthogonal_crossings(Q, P_POS, P_NEG)
    # p_neg x² + p_rest x + p_neg q² = 0 with x = 1 − r: x = (−0.4 ± √0.15) / 0.2
    assert (low, high) == pytest.approx((1 + (0.4 - math.sqrt(0.15)) / 0.2, 1 + (0.4 + math.sqrt(0.15)) / 0.2))
    for ratio in [0.0, 0.9, 1.0, low - 1e-3, low + 1e-3, 2.0, high - 1e-2, high + 1e-2, 6.0]:
        h, W, bias = synthetic_head(ratio, Q, n_other=10, dim=16, seed=0, p_pos=P_POS, p_neg=P_NEG, orthogonal=True)
        _, from_h = first_order_terms(h, W, (W @ h + bias).log_softmax(-1), 0, 1, BETA, bias=bias)
        closed = BETA / 2 * (P_NEG * ((1 - ratio) ** 2 + Q**2) + (1 - P_POS - P_NEG) * (1 - ratio))
        assert from_h == pytest.approx(closed, abs=1e-12)
        assert (from_h < 0) == (low < ratio < high)
    assert math.isnan(orthogonal_crossings(2.0, P_POS, 0.3)[0])  # 0.2² < 4 · 0.3² · 2²: no ratio displaces


@pytest.mark.parametrize("arm", ["frozen", "trained"])
def test_small_steps_follow_the_first_order_prediction(arm):
    h, W, bias = synthetic_head(1.8, Q, n_other=10, dim=16, seed=1, p_pos=P_POS, p_neg=P_NEG)
    W_before = W.clone()
    from_W, from_h = first_order_terms(h, W, (W @ h + bias).log_softmax(-1), 0, 1, BETA, bias=bias)
    predicted = from_h if arm == "frozen" else from_W + from_h
    before, after = gradient_descent(h, W, bias, BETA, lr=1e-4, steps=3, arm=arm)
    assert float(after[0].log() - before[0].log()) == pytest.approx(3e-4 * predicted, rel=1e-3)
    assert torch.equal(W, W_before)  # never changed in place
    with pytest.raises(ValueError, match="arm must be one of"):
        gradient_descent(h, W, bias, BETA, 1e-4, 1, "body")


def test_the_sweep_reads_sign_agreement_and_displacement():
    sweep = similarity_sweep(seeds=[0, 1, 2], beta=BETA, ratios=[0.0, 2.0], h_norms=[1.0], lr=1.0, steps=20)
    assert len(sweep) == 2 * 2 * 3
    frozen = sweep[sweep["arm"] == "frozen"].set_index(["ratio", "seed"])
    assert (frozen.loc[0.0, "predicted"] > 0).all() and (frozen.loc[2.0, "predicted"] < 0).all()
    assert frozen.loc[2.0, "displaced"].all() and not frozen.loc[0.0, "displaced"].any()
    assert (sweep["agree"] == (np.sign(sweep["predicted"]) == np.sign(sweep["observed"]))).all()
    summary = sweep_summary(sweep).set_index(["h_norm", "arm", "ratio"])
    assert summary.loc[(1.0, "frozen", 2.0), "displaced"] == 1.0 and summary.loc[(1.0, "frozen", 2.0), "seeds"] == 3
    # the frozen head's first-order change does not depend on ‖h‖; the trained head's W-term grows as ‖h‖²
    small = similarity_sweep(seeds=[0], beta=BETA, ratios=[2.0], h_norms=[1.0, 0.5], lr=1.0, steps=1).set_index(["h_norm", "arm"])
    assert small.loc[(0.5, "frozen"), "predicted"] == pytest.approx(small.loc[(1.0, "frozen"), "predicted"], rel=1e-12)
    w_term = small.loc[(1.0, "trained"), "predicted"] - small.loc[(1.0, "frozen"), "predicted"]
    w_half = small.loc[(0.5, "trained"), "predicted"] - small.loc[(0.5, "frozen"), "predicted"]
    assert w_half == pytest.approx(w_term / 4, rel=1e-12)
    with pytest.raises(ValueError, match="p_pos and p_neg"):
        synthetic_head(1.0, Q, 10, 16, 0, p_pos=0.7, p_neg=0.4)
