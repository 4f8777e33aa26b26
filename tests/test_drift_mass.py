"""C24 as a mass decomposition (drift_map.mass): where the probability that leaves y_w and y_l goes,
against exact enumeration of every response on a tiny model, and the claim on hand-made runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, UNTESTABLE
from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig
from dpo_toolkit.core.data import encode_response, make_pairs
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.exact import enumerate_responses, is_aligned
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.drift_map.claims import update_claims
from dpo_toolkit.studies.drift_map.mass import LEFT, flow_summary, mass_flow, share_gap
from dpo_toolkit.studies.drift_map.runs import DriftEvaluator

SHORT = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6)  # 1-digit prompts leave 4 response tokens: enumerable
SHORT_DATA = DataConfig(prompt_min=1, prompt_max=9, window=1, test_fraction=0.4, seed=0)


def _enumerated(model, prompt: int) -> list:
    """Every response of `model` to `prompt`: (tokens, (aligned or not, probability))."""
    return [(r, (is_aligned(r, prompt, SHORT_DATA.window), float(np.exp(lp)))) for r, lp in enumerate_responses(model, prompt)]


def _by_brute_force(reference, policy, prompts) -> dict:
    """The decomposition summed response by response: per prompt, what the in-window answers that fell
    lost (each answer's own string 'a.'), what those that rose gained, the OOD mass gained, and the
    mass gained by every other aligned response (other spellings); means over the prompts."""
    left, to_window, to_ood, to_spellings = [], [], [], []
    for s in prompts:
        before, after = dict(_enumerated(reference, int(s))), dict(_enumerated(policy, int(s)))
        answers = {tuple(encode_response(a)) for a in range(max(int(s) - SHORT_DATA.window, 0), int(s) + SHORT_DATA.window + 1)}
        moved = {r: after[r][1] - before[r][1] for r in answers}
        left.append(sum(max(0.0, -m) for m in moved.values()))
        to_window.append(sum(max(0.0, m) for m in moved.values()))
        to_ood.append(sum(after[r][1] - before[r][1] for r in after if not after[r][0]))
        to_spellings.append(sum(after[r][1] - before[r][1] for r in after if after[r][0] and r not in answers))
    return {"left": np.mean(left), "to_window": np.mean(to_window), "to_ood": np.mean(to_ood),
            "to_spellings": np.mean(to_spellings)}  # fmt: skip


def test_the_mass_decomposition_against_exact_enumeration():
    """The in-window losses and gains and the OOD mass logged by DriftEvaluator, turned into left /
    to_window / to_ood / to_spellings by mass_flow, equal the same sums over every enumerated
    response; the other spellings are read from the enumeration directly, so the conservation
    left = to_window + to_ood + to_spellings is checked, not assumed."""
    train, test = make_pairs(SHORT_DATA)
    reference = build_model(SHORT, seed=1).double()
    policy = build_model(SHORT, seed=3).double()
    with torch.no_grad():
        policy.unembed.weight.mul_(2)  # a policy far from its reference: every term is sizeable, to_ood negative here
    evaluator = Evaluator(test, SHORT_DATA, EvalConfig(kl_samples=2), reference=reference)
    drift = DriftEvaluator(evaluator, train, SHORT_DATA.window, n_scored=len(train), seed=0)
    rows = drift(Ensemble([reference, policy]), betas=[0.1, 0.1])
    assert rows[0]["window_lost"] == pytest.approx(0.0, abs=1e-12)  # the reference has moved nothing
    curves = pd.DataFrame([{**row, "step": step, "epoch": float(step)} for step, row in enumerate(rows)])
    curves = curves.assign(task="t", label="a", seed=0)
    read = pd.DataFrame({"task": ["t"], "label": ["a"], "seed": [0], "read_epoch": [1], "updates": [10],
                         "diverged": [False], "collapse": [""], "ood_change": [0.3]})  # fmt: skip
    flow = mass_flow(curves, read).iloc[0]
    expected = _by_brute_force(reference, policy, train.prompts)
    for column in ("left", "to_window", "to_ood", "to_spellings"):
        assert flow[column] == pytest.approx(expected[column], abs=1e-9), column
    assert min(abs(v) for v in expected.values()) > 0.01  # every term is sizeable
    assert expected["to_ood"] < 0 and flow["ood_share"] == 0.0  # the OOD mass fell: none of the moving mass landed there
    assert flow["kind"] == "drifting"


def _flows(shares: dict[tuple[int, str], float], left: float = 0.2) -> pd.DataFrame:
    """Hand-made mass_flow rows: per (seed, kind) an OOD share at one horizon of one task."""
    rows = []
    for (seed, kind), share in shares.items():
        rows.append({"task": "kl_sweep", "label": kind, "seed": seed, "read_epoch": 30, "updates": 7560,
                     "kind": kind, "left": left, "to_ood": share * left, "to_window": (1 - share) * left,
                     "ood_share": share, "diverged": False, "collapse": ""})  # fmt: skip
    return pd.DataFrame(rows)


def _c24(flows: pd.DataFrame) -> pd.Series:
    read = flows.assign(reference_ood=0.02, reference_ood_mass=0.2, ood=0.5, ood_change=0.3, drifted=False)
    empty_cells = pd.DataFrame(columns=["task", "lr", "read_epoch", "collapse_regime"])
    return update_claims(read.iloc[:0], empty_cells, flows).set_index("claim_id").loc["C24"]


def test_c24_reads_the_per_seed_gap_in_ood_share_against_twenty_points():
    # drifting runs send 80 % of the lost pair mass OOD, calm runs 10 %: per-seed gaps 0.7 ± small, clear of 0.2
    seeds = range(6)
    separate = _flows({(s, "drifting"): 0.8 + 0.01 * s for s in seeds} | {(s, "calm"): 0.1 for s in seeds})
    gap = share_gap(separate)
    assert gap.tolist() == pytest.approx([0.7 + 0.01 * s for s in seeds])
    c24 = _c24(separate)
    assert c24["verdict"] == REPRODUCED and c24["n"] == "6" and c24["threshold"] == "0.2"
    # the same share in both kinds: the gap is 0 in every seed, clear below 20 points
    same = _flows({(s, k): 0.3 + 0.01 * s for s in seeds for k in ("drifting", "calm")})
    assert _c24(same)["verdict"] == NOT_REPRODUCED
    # gaps 0, 0, 1, 1, 1 (mean 0.6): Student's t half-width 2.776 · 0.548 / √5 = 0.68 straddles 0.2
    drifting = {(s, "drifting"): (0.5 if s < 2 else 1.0) for s in range(5)}
    mixed = _flows(drifting | {(s, "calm"): (0.5 if s < 2 else 0.0) for s in range(5)})
    c24 = _c24(mixed)
    assert share_gap(mixed).tolist() == pytest.approx([0, 0, 1, 1, 1])
    assert c24["verdict"] == INCONCLUSIVE and float(c24["ci_low"]) < 0.2 < float(c24["ci_high"])


def test_c24_is_untestable_without_both_kinds_and_skips_collapses_and_small_losses():
    only_calm = _flows({(s, "calm"): 0.1 for s in range(5)})
    c24 = _c24(only_calm)
    assert c24["verdict"] == UNTESTABLE and "no seed has both a drifting and a calm run" in c24["our_value"]
    # a collapsed run is neither kind, and a run whose falling answers lost < LEFT has no share
    curves = pd.DataFrame([
        {"task": "t", "label": lab, "seed": 0, "step": step, "epoch": float(step), "window_lost": lost,
         "window_gained": gained, "train_ood_mass": ood}
        for lab, masses in {"moved": [(0.0, 0.0, 0.2), (0.2, 0.1, 0.3)], "still": [(0.0, 0.0, 0.2), (LEFT / 2, 0.0, 0.2)]}.items()
        for step, (lost, gained, ood) in enumerate(masses)
    ])  # fmt: skip
    read = pd.DataFrame({"task": "t", "label": ["moved", "still"], "seed": 0, "read_epoch": 1, "updates": 5,
                         "diverged": False, "collapse": ["no preference learning", ""], "ood_change": [0.5, 0.0]})  # fmt: skip
    flows = mass_flow(curves, read).set_index("label")
    assert flows.loc["moved", "kind"] == "" and flows.loc["moved", "ood_share"] == pytest.approx(0.1 / (0.1 + 0.1))
    assert flows.loc["moved", "to_spellings"] == pytest.approx(0.0)
    assert flows.loc["still", "kind"] == "calm" and np.isnan(flows.loc["still", "ood_share"])
    summary = flow_summary(flows.reset_index())
    assert summary["kind"].tolist() == ["calm"] and summary["shares"].tolist() == [0]


def test_the_ood_share_is_the_landed_share_of_the_moving_mass():
    curves = pd.DataFrame([
        {"task": "t", "label": lab, "seed": 0, "step": step, "epoch": float(step), "window_lost": lost,
         "window_gained": gained, "train_ood_mass": ood}
        for lab, masses in {"out": [(0.0, 0.0, 0.2), (0.3, 0.05, 0.45)], "within": [(0.0, 0.0, 0.2), (0.3, 0.3, 0.2)],
                            "back": [(0.0, 0.0, 0.2), (0.05, 0.15, 0.1)]}.items()
        for step, (lost, gained, ood) in enumerate(masses)
    ])  # fmt: skip
    read = pd.DataFrame({"task": "t", "label": ["out", "within", "back"], "seed": 0, "read_epoch": 1, "updates": 5,
                         "diverged": False, "collapse": "", "ood_change": [0.5, 0.0, 0.0]})  # fmt: skip
    flows = mass_flow(curves, read).set_index("label")
    # out: 0.25 landed OOD, 0.05 in the window; within: all of it in the window; back: OOD fed the window
    assert flows["ood_share"].to_dict() == pytest.approx({"out": 0.25 / 0.30, "within": 0.0, "back": 0.0})
    assert flows.loc["back", "to_spellings"] == pytest.approx(0.05 - 0.15 + 0.1)
