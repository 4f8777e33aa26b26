"""C12 at a matched update budget (studies/ches/full_batch.py): the loss's share per kept pair, the
frozen head, the number-line SGD arm's guard and its claim."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import DataConfig, TrainConfig
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.studies.ches.full_batch import filtered_training, matched_claims, run_number_line_sgd
from dpo_toolkit.studies.ches.measures import HEAD
from dpo_toolkit.studies.ches.phrases import PhraseConfig, phrase_pairs

SGD = dict(optimizer="sgd", lr=0.5, weight_decay=0.0, epochs=1, batch_size=1, grad_clip=None, n_evals=1)
ADAM = {**SGD, "optimizer": "adam", "lr": 1e-2}


def _setup():
    cfg = PhraseConfig(n_statements=6)
    reference = build_model(cfg.model_config(d_model=16), seed=5).requires_grad_(False)
    batch, table = phrase_pairs(cfg)
    return reference, batch, len(table)


def _by_hand(reference, batch, kept, divisor, cfg, steps, frozen_head=False, beta=0.5):
    """The change of log π(y+) of every pair after `steps` steps minimising Σ_kept loss / divisor, by hand."""
    n = len(batch.tokens) // 2
    policy = copy.deepcopy(reference).requires_grad_(True)
    t, m = batch.tokens, batch.response_mask
    with torch.no_grad():
        ref = sequence_logps(reference(t), t, m)
    params = [p for name, p in policy.named_parameters() if not (frozen_head and name.startswith(HEAD))]
    optimizer = make_optimizer(params, cfg)
    for _ in range(steps):
        logps = sequence_logps(policy(t), t, m)
        losses, _, _ = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)
        optimizer.zero_grad()
        (losses[kept].sum() / divisor).backward()
        optimizer.step()
    with torch.no_grad():
        return (sequence_logps(policy(t), t, m)[:n] - ref[:n]).double(), policy


@pytest.mark.parametrize("share", ["kept", "all"])
def test_share_divides_the_kept_pairs_loss_by_the_kept_or_by_all_pairs(share):
    reference, batch, n = _setup()
    kept = np.arange(0, n, 3)
    weights = torch.zeros(2, n)
    weights[0], weights[1, kept] = 1.0, 1.0
    changes, _, _ = filtered_training(reference, batch, weights, [0.0, 0.0], TrainConfig(**SGD), beta=0.5, steps=3, share=share)
    expected, _ = _by_hand(reference, batch, kept, len(kept) if share == "kept" else n, TrainConfig(**SGD), steps=3)
    assert torch.allclose(changes[1], expected, atol=1e-5)
    everything, _ = _by_hand(reference, batch, np.arange(n), n, TrainConfig(**SGD), steps=3)
    assert torch.allclose(changes[0], everything, atol=1e-5)  # all pairs: both shares are the plain mean


def test_under_sgd_the_share_scales_the_step_and_under_adam_it_does_not():
    reference, batch, n = _setup()
    kept = np.arange(0, n, 2)
    weights = torch.zeros(1, n)
    weights[0, kept] = 1.0

    def run(optimizer: dict, share: str) -> torch.Tensor:
        return filtered_training(reference, batch, weights, [0.0], TrainConfig(**optimizer), 0.5, 2, share=share)[0]

    sgd = {s: run(SGD, s) for s in ("kept", "all")}
    assert (sgd["kept"] - sgd["all"]).abs().max() > 1e-3  # SGD: 'kept' steps n/k times as far per kept pair
    adam = {s: run(ADAM, s) for s in ("kept", "all")}
    assert torch.allclose(adam["kept"], adam["all"], atol=1e-4)  # Adam normalises the step: no weighting matches it


def test_the_frozen_head_keeps_its_weights_and_trains_the_body():
    reference, batch, n = _setup()
    weights = torch.ones(1, n)
    changes, _, _ = filtered_training(reference, batch, weights, [0.0], TrainConfig(**SGD), 0.5, 3, share="all", frozen_head=True)
    expected, policy = _by_hand(reference, batch, np.arange(n), n, TrainConfig(**SGD), steps=3, frozen_head=True)
    assert torch.allclose(changes[0], expected, atol=1e-5)
    for name, p in policy.named_parameters():
        moved = not torch.equal(p, dict(reference.named_parameters())[name])
        assert moved != name.startswith(HEAD), name  # head bitwise unchanged, the body moved
    free, _, _ = filtered_training(reference, batch, weights, [0.0], TrainConfig(**SGD), 0.5, 3, share="all")
    assert (free[0] - changes[0]).abs().max() > 1e-4


def test_bad_share_and_a_non_sgd_number_line_arm_are_rejected(tmp_path):
    reference, batch, n = _setup()
    with pytest.raises(ValueError, match="share must be one of"):
        filtered_training(reference, batch, torch.ones(1, n), [0.0], TrainConfig(**SGD), 0.5, 1, share="mean")
    with pytest.raises(ValueError, match="plain SGD"):
        run_number_line_sgd(DataConfig(), TrainConfig(), TrainConfig(**ADAM), 0.1, 1, None, [], [0], tmp_path)


def _rows(values: dict, seeds=(0, 1, 2)) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "variant": name, "kind": kind, "chosen_logp_change": v, "chosen_logp_area": v}
                         for s in seeds for name, (kind, v) in values.items()])  # fmt: skip


def test_number_line_claim_needs_c12s_share_of_displacing_pairs():
    values = {"all": ("all pairs", -0.5), "f": ("CHES filter", -0.1), "s": ("SFT term", -0.3)}
    row = matched_claims(_rows(values), displaced_share=[0.15, 0.14, 0.16]).iloc[0]
    assert (row["claim_id"], row["verdict"]) == ("C12-sgd", "reproduced")  # 15 % ≥ C12's 10 %
    assert "C11's scored pairs" in row["our_value"]
    few = matched_claims(_rows(values), displaced_share=[0.05, 0.04, 0.06]).iloc[0]
    assert (few["verdict"], few["threshold"]) == ("untestable here", "0.1")
    rising = {"all": ("all pairs", 0.2), "f": ("CHES filter", 0.3), "s": ("SFT term", 0.1)}
    assert matched_claims(_rows(rising), displaced_share=[0.3] * 3).iloc[0]["verdict"] == "untestable here"
