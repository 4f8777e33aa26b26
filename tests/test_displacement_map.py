import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.likelihood_displacement.displacement_map import (
    MapGrid,
    map_claims,
    map_summary,
    map_table,
    primary_arm,
    rebalance,
    run_map,
)
from dpo_toolkit.studies.likelihood_displacement.persona import PersonaConfig, answer_logps
from dpo_toolkit.studies.likelihood_displacement.study import DISPLACED_BELOW, lm_features


def test_rebalancing_keeps_the_function_and_scales_h_against_w():
    cfg = PersonaConfig(n_statements=6)
    model = build_model(cfg.model_config(d_model=16), seed=0).double()
    prompt = torch.tensor([cfg.token("Q"), cfg.token("s0"), cfg.token("A")])
    scaled = rebalance(model, 4.0)
    assert torch.allclose(answer_logps(scaled, prompt[None]), answer_logps(model, prompt[None]), atol=1e-12)
    h, W, _ = lm_features(model, prompt)
    h4, W4, _ = lm_features(scaled, prompt)
    assert torch.allclose(h4, h / 4) and torch.allclose(W4, W * 4)
    assert float(model.unembed.weight.detach().abs().sum()) == pytest.approx(float(W.abs().sum()))  # the original is untouched
    with pytest.raises(ValueError, match="scale"):
        rebalance(model, 0.0)


def _runs(cells: dict[tuple, list[tuple[float, float]]], statements: int = 1, catastrophic: bool = False) -> pd.DataFrame:
    """Hand-made run rows: {(head, optimizer, pair, similar, lead, scale): [(predicted, observed), …]}, the
    predicted and observed changes of log π(y+) in order of seed, then statement (`statements` per seed)."""
    rows = []
    for (head, optimizer, pair, similar, lead, scale), outcomes in cells.items():
        for i, (predicted, observed) in enumerate(outcomes):
            displaced = observed <= DISPLACED_BELOW
            rows.append(dict(head=head, optimizer=optimizer, pair=pair, similar=similar, lead_weight=lead, scale=scale,
                             seed=i // statements, statement=i % statements, predicted=predicted, dlogp_pos=observed,
                             agrees=(predicted < 0) == (observed < 0), displaced=displaced,
                             is_catastrophic=displaced and catastrophic, other_meaning_gain=0.2 if catastrophic else 0.0,
                             p_pos_before=0.9, p_pos_after=0.9 * np.exp(observed), h_to_w=10.0, rank_pos=1))  # fmt: skip
    return pd.DataFrame(rows)


FROZEN = ("frozen", "sgd", "No/Never", True, 0.95, 1.0)
TRAINED = ("trained", "sgd", "No/Never", True, 0.95, 1.0)
ADAM = ("trained", "adam", "Yes/No", False, 0.55, 1.0)
FALLS = [(-0.2, -0.5)] * 6  # predicted to fall, and falls far: 3 seeds × 2 statements
RISES = [(0.2, 0.3)] * 6


def test_every_cell_is_reported_with_its_shares():
    runs = _runs({FROZEN: [(-0.2, -0.5), (-0.2, -0.5), (-0.2, 0.1)], TRAINED: [(0.2, 0.3)] * 3, ADAM: [(0.2, -0.4)] * 3})
    table = map_table(runs).set_index(["head", "optimizer", "pair", "lead_weight", "scale"])
    assert len(table) == 3 and (table["runs"] == 3).all()
    assert table.loc[("frozen", "sgd", "No/Never", 0.95, 1.0), "displaced"] == pytest.approx(2 / 3)
    assert table.loc[("frozen", "sgd", "No/Never", 0.95, 1.0), "agrees"] == pytest.approx(2 / 3)
    assert table.loc[("trained", "adam", "Yes/No", 0.55, 1.0), "displaced"] == 1  # Adam's own displacement, its own cell


def _claims(cells: dict, statements: int = 2, catastrophic: bool = False) -> pd.DataFrame:
    claims = map_claims(_runs(cells, statements, catastrophic))
    assert claims["claim_id"].tolist() == ["C10-map", "C10-frozen"]
    return claims.set_index("claim_id")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ({FROZEN: FALLS, ADAM: RISES}, "reproduced"),  # the signs agree and the predicted falls happen
        ({FROZEN: [(-0.2, -0.01)] * 6}, "partly"),  # the signs agree, but the falls stay below the size threshold
        ({FROZEN: [(-0.2, 0.3), (0.2, -0.5)] * 3}, "not reproduced"),  # every sign wrong
        ({FROZEN: RISES, ADAM: [(0.2, -0.5)] * 6}, "untestable here"),  # the theory predicts no fall under SGD; Adam's aside
        ({ADAM: FALLS}, "untestable here"),  # no SGD runs at all
        ({FROZEN: FALLS[:4]}, "inconclusive"),  # two seeds decide nothing
    ],
)
def test_the_map_is_decided_on_the_predicted_sign(cells, expected):
    assert _claims(cells).loc["C10-map", "verdict"] == expected


def test_the_primary_arm_is_sgd_with_the_head_frozen_else_trained():
    both = _runs({FROZEN: FALLS, TRAINED: RISES}, 2)
    assert primary_arm(both)[1] == "SGD, head frozen" and (primary_arm(both)[0]["head"] == "frozen").all()
    assert primary_arm(_runs({TRAINED: RISES}, 2))[1] == "SGD, head trained"
    row = _claims({FROZEN: FALLS, TRAINED: RISES, ADAM: RISES}).loc["C10-map"]
    assert row["verdict"] == "reproduced" and "SGD, head frozen: 6 runs over 3 seeds" in row["our_value"]
    assert "adam, head trained: displaced in 0%" in row["our_value"]  # every other arm named by optimizer and head
    untestable = _claims({FROZEN: RISES}).loc["C10-map"]
    assert "predicts displacement in none of the 6 SGD, head frozen runs" in untestable["precondition"]


def test_the_talks_catastrophic_row_with_the_head_frozen():
    assert _claims({FROZEN: FALLS}, catastrophic=True).loc["C10-frozen", "verdict"] == "reproduced"
    assert _claims({FROZEN: FALLS}).loc["C10-frozen", "verdict"] == "not reproduced"  # falls, but no mass to the other meaning
    assert _claims({TRAINED: FALLS}).loc["C10-frozen", "verdict"] == "untestable here"


def test_the_map_runs_every_cell_from_one_reference_per_seed_and_lead_weight():
    cfg = PersonaConfig(n_statements=10)
    sft = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=30, batch_size=1, grad_clip=None, n_evals=1)
    grid = MapGrid(lead_weights=(0.6,), scales=(1.0, 8.0), optimizers={"sgd": 0.1, "adam": 1e-3}, pairs=(("No", "Never"),),
                   heads=("trained", "frozen", "slow"))  # fmt: skip
    runs = run_map(cfg, cfg.model_config(d_model=16), sft, grid, beta=0.1, steps=3, seeds=[0], prompts_per_pair=2)
    assert len(runs) == 2 * 3 * 2 * 2  # scales × heads × optimizers × statements
    assert (runs["displaced"] == (runs["dlogp_pos"] <= DISPLACED_BELOW)).all()
    assert np.allclose(runs["dlogp_pos"], np.log(runs["p_pos_after"] / runs["p_pos_before"]))
    frozen, trained = runs[runs["head"] == "frozen"], runs[runs["head"] == "trained"]
    assert np.allclose(frozen["predicted"], frozen["change_from_h"])  # W fixed: the h-term alone
    assert np.allclose(trained["predicted"], trained["change_from_h"] + trained["change_from_W"])
    slow = runs[runs["head"] == "slow"]  # the head at a tenth of the rate: a tenth of the W-term
    assert np.allclose(slow["predicted"], slow["change_from_h"] + 0.1 * slow["change_from_W"])
    assert (runs["change_from_W"] >= 0).all() and (runs["rank_pos"] >= 1).all()
    by_scale = runs.groupby(["head", "optimizer", "statement"])
    assert (by_scale["p_pos_before"].agg(lambda p: p.max() - p.min()) < 1e-6).all()  # rebalancing keeps π_ref
    ratio = runs.groupby("scale")["h_to_w"].mean()
    assert ratio[8.0] / ratio[1.0] == pytest.approx(8.0**-4, rel=1e-4)  # ‖h‖²/‖W_z‖² falls by scale⁴
    with pytest.raises(ValueError, match="heads"):
        MapGrid(lead_weights=(0.6,), scales=(1.0,), optimizers={"sgd": 0.1}, heads=("half",))


def test_the_summary_leads_with_the_theorys_arm():
    text = map_summary(_runs({FROZEN: FALLS, ADAM: RISES}, 2))
    assert text.startswith("**SGD, head frozen:** the predicted sign of Δ log π(y+) held in 100% of 6 runs")
    assert "By optimizer — adam: 0%, sgd: 100%" in text and "by head — frozen: 100%, trained: 0%" in text
    assert "**No/Never** displaces in most runs of 1 of 1 cells (sgd, head frozen, lead 0.95, scale 1)." in text
