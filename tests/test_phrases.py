import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.data import Batch, collate_pairs
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.studies.ches.displacing import phrase_claims, phrase_mitigation_claims
from dpo_toolkit.studies.ches.full_batch import filtered_training, matched_claims
from dpo_toolkit.studies.ches.measures import normalized_ches, single_pair_displacement
from dpo_toolkit.studies.ches.phrases import (
    MEANING,
    PHRASE_GROUPS,
    PHRASES,
    PhraseConfig,
    phrase_batch,
    phrase_pairs,
    statements,
    subset_displacement,
    subset_indices,
    train_phrase_reference,
)

ADAM = dict(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=1, batch_size=1, grad_clip=None, n_evals=1)


def test_every_statement_prefers_its_lead_phrase_to_each_other_phrase_and_no_pair_shares_a_prefix():
    cfg = PhraseConfig(n_statements=12)
    batch, table = phrase_pairs(cfg)
    _, stances = statements(cfg)
    assert len(table) == 11 * 12 and len(batch.tokens) == 2 * len(table)
    assert (table["chosen"] == [PHRASE_GROUPS[stances[i]][0] for i in table["statement"]]).all()
    assert (table.groupby("statement")["rejected"].nunique() == 11).all()
    meanings = [MEANING[r] == stances[i] for i, r in zip(table["statement"], table["rejected"], strict=True)]
    assert (table["same_meaning"] == meanings).all()
    assert len({p.split()[0] for p in PHRASES}) == len(PHRASES)  # distinct first words: no shared prefix in any pair
    n = len(table)
    for k in (0, 5, n - 1):  # chosen rows first, then rejected rows, each marking exactly its phrase's words
        for row, phrase in ((k, table["chosen"][k]), (n + k, table["rejected"][k])):
            words = [cfg.vocab[t] for t in batch.tokens[row][batch.response_mask[row]].tolist()]
            assert words == phrase.split()


def test_the_reference_puts_the_lead_weight_on_the_lead_phrase():
    cfg = PhraseConfig(n_statements=6, lead_weight=0.9)
    model = build_model(cfg.model_config(d_model=32), seed=0)
    train_phrase_reference(cfg, model, TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=300, grad_clip=None))
    prompts, stances = statements(cfg)
    batch = phrase_batch(cfg, [(p, r) for p in prompts for r in PHRASES])
    with torch.no_grad():
        masses = sequence_logps(model(batch.tokens), batch.tokens, batch.response_mask).exp().view(len(prompts), len(PHRASES))
    lead = [PHRASES.index(PHRASE_GROUPS[s][0]) for s in stances]
    assert masses[torch.arange(len(prompts)), lead].numpy() == pytest.approx(0.9, abs=0.03)
    assert masses.sum(1).numpy() == pytest.approx(1.0, abs=0.03)  # little mass outside the phrase set


def test_subsets_are_the_lowest_median_and_highest_scores():
    scores = np.array([5.0, -1.0, 3.0, 0.0, 2.0, 4.0, -3.0, 1.0, 6.0])
    subsets = subset_indices(scores, 2)
    assert set(subsets["lowest"]) == {6, 1} and set(subsets["highest"]) == {0, 8}
    assert set(subsets["median"]) == {7, 4}  # sorted: -3 -1 0 1 2 3 4 5 6 → the middle two start at (9 − 2) // 2 = 3
    with pytest.raises(ValueError, match="size"):
        subset_indices(scores, 4)


def test_a_subset_trains_as_one_model_would_and_an_identical_pair_does_not_move():
    """Each member of the protocol's ensemble must follow the plain full-batch DPO loop on its
    subset; a subset of pairs whose y+ and y− coincide has zero DPO gradient, so under plain
    gradient descent π(y+) stays."""
    cfg = PhraseConfig(n_statements=6)
    reference = build_model(cfg.model_config(d_model=16), seed=1).requires_grad_(False)
    batch, table = phrase_pairs(cfg)
    n = len(table)
    tokens, mask = batch.tokens.clone(), batch.response_mask.clone()
    tied = np.arange(0, 3)
    tokens[n + tied], mask[n + tied] = tokens[tied], mask[tied]  # y− := y+ for pairs 0–2
    batch = Batch(tokens, mask)
    subsets = {"tied": tied, "other": np.array([10, 20, 30])}
    sgd = TrainConfig(**(ADAM | {"optimizer": "sgd"}))  # Adam would blow float noise up to full steps
    assert subset_displacement(reference, batch, subsets, sgd, beta=0.5, steps=5)["tied"] == pytest.approx(0.0, abs=1e-7)
    cfg_train = TrainConfig(**ADAM)
    change = subset_displacement(reference, batch, subsets, cfg_train, beta=0.5, steps=5)
    rows = np.concatenate([subsets["other"], subsets["other"] + n])
    alone = copy.deepcopy(reference).requires_grad_(True)
    t, m = batch.tokens[rows], batch.response_mask[rows]
    with torch.no_grad():
        ref_logps = sequence_logps(reference(t), t, m)
    optimizer = make_optimizer(alone.parameters(), cfg_train)
    for _ in range(5):
        logps = sequence_logps(alone(t), t, m)
        loss, _, _ = dpo_loss(logps[:3], logps[3:], ref_logps[:3], ref_logps[3:], 0.5)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        expected = float((sequence_logps(alone(t), t, m)[:3] - ref_logps[:3]).mean())
    assert change["other"] == pytest.approx(expected, abs=1e-5) and abs(expected) > 1e-3


def test_normalized_ches_uses_the_mean_hidden_embedding_of_each_response():
    cfg = PhraseConfig(n_statements=6)
    model = build_model(cfg.model_config(d_model=16), seed=2)
    batch, table = phrase_pairs(cfg)
    scores = normalized_ches(model, batch)
    n = len(table)
    for k in (0, 7, n - 1):
        means = []
        for row in (k, n + k):
            length = int(batch.response_mask[row].sum())
            start = int(batch.response_mask[row].nonzero()[0])
            with torch.no_grad():
                hidden, _ = model.hidden(batch.tokens[row : row + 1, : start + length])
            means.append(hidden[0, start - 1 : start + length - 1].double().mean(0))  # positions predicting its tokens
        assert float(scores[k]) == pytest.approx(float(means[0] @ means[1] - means[0] @ means[0]), rel=1e-6, abs=1e-9)


def test_single_pair_displacement_takes_a_batch_as_it_takes_pairs(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    cfg = TrainConfig(**ADAM)
    from_pairs = single_pair_displacement(tiny_model, train, cfg, 0.1, 3, chunk=7)
    from_batch = single_pair_displacement(tiny_model, collate_pairs(train), cfg, 0.1, 3, chunk=7)
    assert np.allclose(from_pairs, from_batch, atol=1e-6)


SEEDS = (0, 1, 2)


def _study(displacements, ches_values, subset_changes, seeds=SEEDS):
    """Hand-made run_phrase_study output: per seed the same pairs; subset_changes maps each subset
    to one change (every seed) or a list of one change per seed."""
    pairs = pd.concat(
        [pd.DataFrame({"seed": s, "statement": np.arange(len(ches_values)) // 3, "displacement": displacements,
                       "ches": ches_values, "ches_normalized": ches_values,
                       "edit": np.zeros(len(ches_values)), "cosine": np.arange(len(ches_values)) % 3}) for s in seeds],
        ignore_index=True,
    )  # fmt: skip
    per_seed = {k: np.broadcast_to(v, len(seeds)) for k, v in subset_changes.items()}
    protocol = pd.DataFrame([{"seed": s, "measure": m, "subset": k, "size": 2, "mean_score": 0.0,
                              "chosen_logp_change": float(v[i]) if m == "ches" else 9.0}
                             for i, s in enumerate(seeds) for k, v in per_seed.items() for m in ("ches", "edit")])  # fmt: skip
    return pairs, protocol


DISPLACING = np.array([0.1, 0.05, -0.1, -0.2, -0.3, -0.4])  # falls for 4 of 6
ORDERED = {"lowest": 0.1, "median": -0.1, "highest": -0.5}
REVERSED = {"lowest": -0.5, "median": -0.1, "highest": 0.1}
VARYING = {"lowest": [0.1, 0.2, 0.0], "median": [-0.1, -0.05, -0.15], "highest": [-0.4, -0.6, -0.5]}
"""Seeds that differ: the highest subset falls by 0.5 ± 0.1, below the median's −0.1 ± 0.05 in each seed."""


@pytest.mark.parametrize(
    ("displacement", "scores", "subsets", "expected"),
    [
        (DISPLACING, np.arange(6.0), ORDERED, "reproduced"),  # CHES ranks −Δ perfectly, highest subset lowest
        (DISPLACING, np.arange(6.0)[::-1], ORDERED, "partly"),  # ranking fails, protocol holds
        (DISPLACING, np.arange(6.0), REVERSED, "partly"),  # ranking holds, protocol fails
        (DISPLACING, np.arange(6.0)[::-1], REVERSED, "not reproduced"),
        # ordered, but no subset displaces: the highest-CHES subset only gains less
        (DISPLACING, np.arange(6.0)[::-1], {"lowest": 0.04, "median": 0.03, "highest": 0.02}, "not reproduced"),
        (np.array([0.1, 0.2, 0.3, 0.4, 0.5, -0.1]), np.arange(6.0), ORDERED, "untestable here"),  # 1 of 6 < 20 %
        (DISPLACING, np.arange(6.0), VARYING, "reproduced"),
    ],
)
def test_phrase_verdicts(displacement, scores, subsets, expected):
    claims = phrase_claims(*_study(displacement, scores, subsets))
    assert claims["claim_id"].tolist() == ["C11-phrases"] and claims["verdict"].iloc[0] == expected
    assert claims["n"].iloc[0] == "3"


def test_a_ranking_that_only_tells_statements_apart_is_not_enough():
    # statement 0's pairs barely move, statement 1's fall; CHES is higher on statement 1 (overall ρ > 0.3) but
    # orders each statement's own pairs backwards (within-statement ρ −1)
    displacement = np.array([0.1, 0.05, -0.05, -0.2, -0.3, -0.4])
    scores = np.array([2.0, 1.0, 0.0, 5.0, 4.0, 3.0])
    row = phrase_claims(*_study(displacement, scores, ORDERED)).iloc[0]
    assert row["verdict"] == "partly" and row["estimate"] == "-1"  # decided by the within-statement check
    assert "within-statement Spearman" in row["our_value"]


def test_phrase_claim_reads_the_deciding_quantity_per_seed():
    # ρ(CHES) = 1 in every seed, the deciding check of a reproduced claim: point interval at 1
    row = phrase_claims(*_study(DISPLACING, np.arange(6.0), ORDERED)).iloc[0]
    assert (row["estimate"], row["ci_low"], row["ci_high"], row["threshold"]) == ("1", "1", "1", "0.3")
    # ranking fails (ρ −1), the protocol holds: partly, decided by the failed rank check
    partly = phrase_claims(*_study(DISPLACING, np.arange(6.0)[::-1], ORDERED)).iloc[0]
    assert partly["verdict"] == "partly" and partly["estimate"] == "-1"


def test_phrase_claim_is_inconclusive_on_two_seeds_or_a_straddling_protocol():
    two = phrase_claims(*_study(DISPLACING, np.arange(6.0), ORDERED, seeds=(0, 1))).iloc[0]
    assert two["verdict"] == "inconclusive" and two["n"] == "2"
    # ranking fails; the highest subset's change is −0.5, +0.3, −0.5: its interval straddles 0
    straddling = {"lowest": 0.4, "median": 0.35, "highest": [-0.5, 0.3, -0.5]}
    row = phrase_claims(*_study(DISPLACING, np.arange(6.0)[::-1], straddling)).iloc[0]
    assert row["verdict"] == "inconclusive"
    assert float(row["estimate"]) == pytest.approx(-0.7 / 3, abs=1e-3) and float(row["ci_low"]) < 0 < float(row["ci_high"])


def test_filtered_members_train_as_their_kept_subset_and_the_sft_term_adds_lambda_nll():
    cfg = PhraseConfig(n_statements=6)
    reference = build_model(cfg.model_config(d_model=16), seed=3).requires_grad_(False)
    batch, table = phrase_pairs(cfg)
    n, train = len(table), TrainConfig(**ADAM)
    kept = np.array([1, 4, 9, 16, 25, 36])
    weights = torch.zeros(3, n)
    weights[0], weights[1, kept], weights[2] = 1.0, 1.0, 1.0
    changes, ref_chosen, areas = filtered_training(reference, batch, weights, [0.0, 0.0, 0.7], train, beta=0.5, steps=4)
    assert changes.shape == (3, n) and ref_chosen.shape == (n,) and areas.shape == (3, n)
    alone = subset_displacement(reference, batch, {"kept": kept}, train, beta=0.5, steps=4)["kept"]
    assert float(changes[1, kept].mean()) == pytest.approx(alone, abs=1e-5)  # the masked member = DPO on its kept pairs
    policy = copy.deepcopy(reference).requires_grad_(True)  # the SFT member, by hand
    t, m = batch.tokens, batch.response_mask
    with torch.no_grad():
        ref_logps = sequence_logps(reference(t), t, m)
    optimizer = make_optimizer(policy.parameters(), train)
    after_each = []
    for _ in range(4):
        logps = sequence_logps(policy(t), t, m)
        loss, _, _ = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], 0.5)
        optimizer.zero_grad()
        (loss.mean() - 0.7 * logps[:n].mean()).backward()
        optimizer.step()
        with torch.no_grad():
            after_each.append(sequence_logps(policy(t), t, m)[:n] - ref_logps[:n])
    expected = after_each[-1]
    assert torch.allclose(changes[2], expected.double(), atol=1e-5)
    assert torch.allclose(areas[2], torch.stack(after_each).mean(0).double(), atol=1e-5)  # the mean over the 4 steps


def _mitigation(values: dict[str, tuple[str, float | list[float]]], seeds=SEEDS) -> pd.DataFrame:
    """Hand-made run_phrase_study mitigation rows: each variant's change, one for every seed or one per seed."""
    per_seed = {name: (kind, np.broadcast_to(v, len(seeds))) for name, (kind, v) in values.items()}
    return pd.DataFrame([{"seed": s, "variant": name, "kind": kind, "chosen_logp_change": float(v[i]),
                          "chosen_logp_area": float(v[i])}
                         for i, s in enumerate(seeds) for name, (kind, v) in per_seed.items()])  # fmt: skip


SHARES = [0.4, 0.35, 0.45]  # per seed, the share of single pairs whose π(y+) fell


def _pairs(shares, seeds=SEEDS) -> pd.DataFrame:
    """A hand-made pairs table: 100 pairs per seed, the given share of them with π(y+) fallen."""
    return pd.DataFrame([{"seed": s, "displacement": -1.0 if i < round(100 * share) else 1.0}
                         for s, share in zip(seeds, shares, strict=True) for i in range(100)])  # fmt: skip


SWITCHING = {"all": ("all pairs", -0.5), "f1": ("CHES filter", [-0.1, -0.1, -0.9]), "f2": ("CHES filter", [-0.9, -0.9, -0.1]),
             "s": ("SFT term", -0.3)}  # fmt: skip
"""The best filter differs between seeds (f1, f1, f2); each seed's best is at −0.1."""


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"all": ("all pairs", -0.5), "f": ("CHES filter", -0.1), "s": ("SFT term", -0.3)}, "reproduced"),
        ({"all": ("all pairs", -0.5), "f": ("CHES filter", -0.3), "s": ("SFT term", 0.2)}, "partly"),
        ({"all": ("all pairs", -0.5), "f": ("CHES filter", -0.6), "s": ("SFT term", 0.2)}, "not reproduced"),
        # filter and SFT term both at the ceiling log(1/π_ref): a tie is not "better"
        ({"all": ("all pairs", -0.5), "f": ("CHES filter", 0.0517), "s": ("SFT term", 0.0516)}, "partly"),
        ({"all": ("all pairs", 0.1), "f": ("CHES filter", 0.3), "s": ("SFT term", 0.2)}, "untestable here"),
        (SWITCHING, "reproduced"),  # each seed's best filter beats all pairs and the SFT term
    ],
)
def test_phrase_mitigation_verdicts(values, expected):
    claims = phrase_mitigation_claims(_mitigation(values), _pairs(SHARES))
    assert claims["claim_id"].tolist() == ["C12-phrases"] and claims["verdict"].iloc[0] == expected
    # too few single pairs displace: 15 ± 1 % in every seed, above C11's 10 % but below this task's 20 %
    few = phrase_mitigation_claims(_mitigation(values), _pairs([0.15, 0.14, 0.16]))
    assert few["verdict"].iloc[0] == "untestable here"


def test_phrase_mitigation_reads_each_seeds_best_filter():
    row = phrase_mitigation_claims(_mitigation(SWITCHING), _pairs(SHARES)).iloc[0]
    # each seed's best filter is at −0.1: it gains 0.4 over all pairs in every seed (the deciding, first check)
    assert (row["verdict"], row["estimate"], row["ci_low"], row["ci_high"], row["threshold"]) == (
        "reproduced", "0.4", "0.4", "0.4", "0.01")  # fmt: skip
    # the seed means would pick f1 (mean −0.367), below the SFT term's −0.3: the old rule said partly
    assert "each seed's best filter -0.100 ± 0.000" in row["our_value"]
    few = phrase_mitigation_claims(_mitigation(SWITCHING), _pairs([0.15, 0.14, 0.16])).iloc[0]
    assert (few["verdict"], few["threshold"]) == ("untestable here", "0.2")  # this task's MIN_DISPLACED, not C11's 0.1


def test_phrase_mitigation_is_inconclusive_on_two_seeds_a_single_share_or_a_straddling_gain():
    values = {"all": ("all pairs", -0.5), "f": ("CHES filter", -0.1), "s": ("SFT term", -0.3)}
    two = phrase_mitigation_claims(_mitigation(values, seeds=(0, 1)), _pairs(SHARES[:2], seeds=(0, 1))).iloc[0]
    assert two["verdict"] == "inconclusive" and two["n"] == "2"
    pooled = matched_claims(_mitigation(values), displaced_share=0.4).iloc[0]  # one number: one replicate
    assert pooled["verdict"] == "inconclusive" and "precondition" in pooled["our_value"]
    straddling = {"all": ("all pairs", -0.5), "f": ("CHES filter", [-0.1, -0.9, -0.1]), "s": ("SFT term", -1.0)}
    row = phrase_mitigation_claims(_mitigation(straddling), _pairs(SHARES)).iloc[0]
    assert row["verdict"] == "inconclusive"  # gains +0.4, −0.4, +0.4 over all pairs: mean 0.133, interval across 0.01
    assert float(row["estimate"]) == pytest.approx(0.4 / 3, abs=1e-3)


def test_the_protocol_figure_has_a_hatched_bar_per_score_and_subset_at_its_ceiling_fraction():
    import matplotlib.pyplot as plt

    from dpo_toolkit.plotting import plot_ches_protocol

    protocol = pd.DataFrame([{"seed": s, "measure": m, "subset": k, "ceiling_fraction": f + 0.1 * i}
                             for s in (0, 1) for i, m in enumerate(("ches", "edit", "cosine"))
                             for k, f in (("lowest", 0.5), ("median", 0.2), ("highest", -0.3))])  # fmt: skip
    fig = plot_ches_protocol(protocol)
    ax = fig.axes[0]
    heights = [bar.get_height() for bars in ax.containers for bar in bars]
    assert heights == pytest.approx([0.5, 0.2, -0.3, 0.6, 0.3, -0.2, 0.7, 0.4, -0.1])
    assert len({bars[0].get_hatch() for bars in ax.containers}) == 3  # each score its own hatch
    plt.close(fig)


def test_phrase_mitigation_reads_the_area_where_the_end_saturates():
    # at the end the filter and the SFT term both sit at the ceiling (+0.05): a tie; the filter got there sooner
    rows = []
    for s in SEEDS:
        variants = (
            ("all pairs", "all pairs", -0.1, -0.05),
            ("CHES top 10% removed", "CHES filter", 0.05, 0.04),
            ("SFT λ=1", "SFT term", 0.05, 0.02 + 0.001 * s),
        )
        for name, kind, end, area in variants:
            rows.append({"seed": s, "variant": name, "kind": kind, "chosen_logp_change": end, "chosen_logp_area": area})
    mitigation = pd.DataFrame(rows)
    assert phrase_mitigation_claims(mitigation, _pairs(SHARES)).iloc[0]["verdict"] == "reproduced"
    at_end = phrase_mitigation_claims(mitigation, _pairs(SHARES), metric="chosen_logp_change").iloc[0]
    assert at_end["verdict"] == "partly"  # above all pairs, tied with the SFT term at the ceiling


def test_phrase_mitigation_is_decided_on_the_sgd_arm_with_its_own_share_and_reports_adam_beside():
    from dpo_toolkit.studies.ches.displacing import ADAM_ARM, SGD_ARM

    good = {"all": ("all pairs", -0.5), "f": ("CHES filter", -0.1), "s": ("SFT term", -0.3)}
    rising = {"all": ("all pairs", 0.2), "f": ("CHES filter", 0.3), "s": ("SFT term", 0.1)}
    mitigation = pd.concat([_mitigation(good).assign(arm=ADAM_ARM), _mitigation(rising).assign(arm=SGD_ARM)])
    pairs = _pairs(SHARES).assign(displacement_sgd_frozen=_pairs([0.3, 0.3, 0.3])["displacement"])
    row = phrase_mitigation_claims(mitigation, pairs).iloc[0]
    assert row["verdict"] == "untestable here"  # under SGD all pairs raise log π(y+): nothing to mitigate
    assert SGD_ARM in row["our_value"]
    assert f"under {ADAM_ARM} (an optimizer arm, not deciding): all pairs -0.500" in row["our_value"]
    assert "single pairs: 30%" in row["precondition"]  # the SGD head-frozen share, not the Adam column's 40 %
    swapped = pd.concat([_mitigation(rising).assign(arm=ADAM_ARM), _mitigation(good).assign(arm=SGD_ARM)])
    assert phrase_mitigation_claims(swapped, pairs).iloc[0]["verdict"] == "reproduced"


def test_run_phrase_study_gives_each_seed_what_it_gives_alone_with_both_c12_arms():
    from dpo_toolkit.studies.ches.displacing import ADAM_ARM, SGD_ARM, run_phrase_study
    from dpo_toolkit.studies.ches.mitigation import variants

    cfg = PhraseConfig(n_statements=6)
    sft = TrainConfig(**{**ADAM, "epochs": 3})
    sgd = TrainConfig(**{**ADAM, "optimizer": "sgd", "lr": 0.1})
    study = dict(runs=variants([0.5], [1.0]), mitigation_steps=2, sgd_cfg=sgd)
    _, _, mitigation = run_phrase_study(cfg, sft, TrainConfig(**ADAM), 0.1, 2, 0.25, (0, 1), **study)
    arms = sorted(set(zip(mitigation["seed"], mitigation["arm"], strict=True)))
    assert arms == [(0, ADAM_ARM), (0, SGD_ARM), (1, ADAM_ARM), (1, SGD_ARM)]
    _, _, alone = run_phrase_study(cfg, sft, TrainConfig(**ADAM), 0.1, 2, 0.25, (1,), **study)
    second = mitigation[mitigation["seed"] == 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(second, alone, atol=1e-6)  # the second seed is not trained on the first's configs
