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
    rebalance,
    run_map,
)
from dpo_toolkit.studies.likelihood_displacement.persona import PersonaConfig, answer_logps
from dpo_toolkit.studies.likelihood_displacement.study import lm_features


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


def _runs(cells: dict[tuple, list[tuple[bool, bool]]], statements: int = 1) -> pd.DataFrame:
    """Hand-made run rows: {(optimizer, pair, similar, lead, scale): [(displaced, catastrophic), …]}, the
    outcomes in order of seed, then statement (`statements` per seed)."""
    rows = []
    for (optimizer, pair, similar, lead, scale), outcomes in cells.items():
        for i, (displaced, catastrophic) in enumerate(outcomes):
            rows.append(dict(optimizer=optimizer, pair=pair, similar=similar, lead_weight=lead, scale=scale,
                             seed=i // statements, statement=i % statements, displaced=displaced,
                             is_catastrophic=catastrophic, p_pos_before=0.9, p_pos_after=0.5 if displaced else 0.99,
                             h_to_w=10.0))  # fmt: skip
    return pd.DataFrame(rows)


NONE = [(False, False)] * 3


def test_every_cell_is_reported_with_its_shares():
    runs = _runs({("sgd", "No/Never", True, 0.95, 16.0): [(True, True), (True, False), (False, False)],
                  ("sgd", "Yes/No", False, 0.95, 16.0): NONE, ("adam", "No/Never", True, 0.55, 1.0): NONE})  # fmt: skip
    table = map_table(runs).set_index(["optimizer", "pair", "lead_weight", "scale"])
    assert len(table) == 3 and (table["runs"] == 3).all()
    assert table.loc[("sgd", "No/Never", 0.95, 16.0), "displaced"] == pytest.approx(2 / 3)
    assert table.loc[("sgd", "No/Never", 0.95, 16.0), "catastrophic"] == pytest.approx(1 / 3)
    assert table.loc[("adam", "No/Never", 0.55, 1.0), "displaced"] == 0


SYNONYMS = ("sgd", "No/Never", True, 0.95, 16.0)
OPPOSITE = ("sgd", "Yes/No", False, 0.95, 16.0)


def _c10_map(cells: dict, statements: int = 1) -> pd.Series:
    claims = map_claims(_runs(cells, statements))
    assert claims["claim_id"].tolist() == ["C10-map"]
    return claims.iloc[0]


EVERY_SEED = [(True, True), (True, False)] * 3  # 3 seeds × 2 statements: all displaced, one catastrophic per seed


@pytest.mark.parametrize(
    ("cells", "statements", "expected"),
    [
        # (a) 6 of 6 runs over 3 seeds, Wilson [6 / (6 + z²), 1] = [0.61, 1] ≥ 50 %; (b) a quarter of each seed's runs
        # catastrophic; (c) synonyms 100 % vs opposite 0 % in each seed
        ({SYNONYMS: EVERY_SEED, OPPOSITE: [(False, False)] * 6}, 2, "reproduced"),
        # displacing, but only for opposite meanings: (c) is −1 in every seed, the theory's ordering fails
        ({SYNONYMS: [(False, False)] * 6, OPPOSITE: EVERY_SEED}, 2, "partly"),
        ({SYNONYMS: [(True, False)] * 6, OPPOSITE: [(False, False)] * 6}, 2, "partly"),  # no catastrophic run in any seed
        # one displaced (catastrophic) run in each seed's five: the best cell's 3 of 15, Wilson [0.07, 0.45] < 50 %
        ({SYNONYMS: [(True, True), *[(False, False)] * 4] * 3, OPPOSITE: [(False, False)] * 15}, 5, "partly"),
        ({SYNONYMS: NONE, OPPOSITE: NONE}, 1, "not reproduced"),  # no seed displaces anywhere
        # three seeds that disagree: only seed 0 displaces; every share straddles its threshold
        ({SYNONYMS: [(True, True), (False, False), (False, False)], OPPOSITE: NONE}, 1, "inconclusive"),
        ({SYNONYMS: EVERY_SEED[:4], OPPOSITE: [(False, False)] * 4}, 2, "inconclusive"),  # two seeds decide nothing
    ],
)
def test_map_verdicts(cells, statements, expected):
    assert _c10_map(cells, statements)["verdict"] == expected


def test_map_verdict_values_by_hand():
    row = _c10_map({SYNONYMS: EVERY_SEED, OPPOSITE: [(False, False)] * 6}, 2)
    z2 = 1.959963984540054**2
    assert (row["n"], row["estimate"], row["threshold"]) == ("3", "1", "0.5")
    assert float(row["ci_low"]) == pytest.approx(6 / (6 + z2), abs=1e-4)
    assert (
        "12 runs in 2 cells over 3 seeds" in row["our_value"] and "synonym pairs 100% vs opposite meanings 0%" in row["our_value"]
    )
    row = _c10_map({SYNONYMS: [(False, False)] * 6, OPPOSITE: EVERY_SEED}, 2)
    assert (row["estimate"], row["ci_low"], row["ci_high"]) == ("-1", "-1", "-1")  # (c) decides: −1 in every seed


def test_the_map_runs_every_cell_from_one_reference_per_seed_and_lead_weight():
    cfg = PersonaConfig(n_statements=10)
    sft = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=30, batch_size=1, grad_clip=None, n_evals=1)
    grid = MapGrid(lead_weights=(0.6,), scales=(1.0, 8.0), optimizers={"sgd": 0.1, "adam": 1e-3}, pairs=(("No", "Never"),))
    runs = run_map(cfg, cfg.model_config(d_model=16), sft, grid, beta=0.1, steps=3, seeds=[0], prompts_per_pair=2)
    assert len(runs) == 2 * 2 * 2  # scales × optimizers × statements
    assert (runs["displaced"] == (runs["p_pos_after"] < runs["p_pos_before"])).all()
    by_scale = runs.groupby(["optimizer", "statement"])
    assert (by_scale["p_pos_before"].agg(lambda p: p.max() - p.min()) < 1e-6).all()  # rebalancing keeps π_ref
    ratio = runs.groupby("scale")["h_to_w"].mean()
    assert ratio[8.0] / ratio[1.0] == pytest.approx(8.0**-4, rel=1e-4)  # ‖h‖²/‖W_z‖² falls by scale⁴


def test_the_summary_names_the_shares_and_the_displacing_cells():
    text = map_summary(_runs({SYNONYMS: [(True, True), (True, False), (False, False)], OPPOSITE: NONE}))
    assert "π(y+) fell in 33% of 6 runs" in text and "sgd: 33%" in text and "lead weight) — 0.95: 33%" in text
    assert "**No/Never** displaces in most runs of 1 of 1 cells (sgd, lead 0.95, scale 16)." in text
    assert "**Yes/No** displaces in most runs of 0 of 1 cells." in text
