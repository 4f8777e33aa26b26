import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.data import PairSet, collate_pairs
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.train import make_optimizer
from dpo_toolkit.studies.ches.identify import ches_claims, pair_subset
from dpo_toolkit.studies.ches.measures import (
    ches,
    ches_filter,
    ches_from_sums,
    edit_similarity,
    hf_ches,
    hidden_cosine,
    response_hidden_sums,
    single_pair_displacement,
)


def _brute_force(model, pairs):
    """CHES by a loop over pairs and response tokens, from one sequence at a time."""
    batch = collate_pairs(pairs)
    n = len(pairs)
    out = []
    for i in range(n):
        sums = []
        for row in (i, n + i):
            tokens, mask = batch.tokens[row], batch.response_mask[row]
            hidden, _ = model.hidden(tokens[None])
            total = torch.zeros(hidden.shape[-1], dtype=torch.float64)
            for t in range(1, len(tokens)):
                if mask[t]:
                    total += hidden[0, t - 1].double()
            sums.append(total)
        out.append(float(sums[0] @ sums[1] - sums[0] @ sums[0]))
    return out


def test_ches_matches_a_brute_force_loop(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    subset = PairSet(train.prompt[:6], train.chosen[:6], train.rejected[:6])
    with torch.no_grad():
        assert ches(tiny_model, subset).tolist() == pytest.approx(_brute_force(tiny_model, subset), rel=1e-5, abs=1e-6)


def test_identical_responses_score_zero(tiny_model):
    same = PairSet(np.array([5, 12]), np.array([4, 13]), np.array([4, 13]))
    assert ches(tiny_model, same).abs().max().item() < 1e-9


def test_formula_on_known_sums():
    chosen, rejected = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    assert ches_from_sums(chosen, rejected).item() == pytest.approx((3 - 2) - 5)
    hidden = torch.arange(12.0).view(1, 4, 3)  # positions 0..3
    mask = torch.tensor([[False, False, True, True]])  # tokens 2 and 3 are predicted by positions 1 and 2
    assert response_hidden_sums(hidden, mask).tolist() == [[3 + 6, 4 + 7, 5 + 8]]


def test_filter_keeps_exactly_the_pairs_under_the_threshold():
    scores = np.array([0.5, -1.0, 3.0, 2.0, 0.0, 10.0, -4.0, 1.0, 7.0, 6.0])
    keep = ches_filter(scores, 0.3)  # drop the top 3: 10, 7, 6
    assert keep.tolist() == [True, True, True, True, True, False, True, True, False, False]
    assert ches_filter(scores, 0.0).all()
    with pytest.raises(ValueError, match=r"drop_fraction must be in \[0, 1\)"):
        ches_filter(scores, 1.0)


def test_hf_path_on_a_tiny_gpt2_matches_a_direct_computation():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["[UNK]", "is", "this", "safe", "?", "no", "never", "yes", "sure", "."])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompts, chosen, rejected = ["is this safe ?", "is this safe ?"], ["no .", "yes"], ["never .", "yes"]
    scores = hf_ches(model, tokenizer, prompts, chosen, rejected)
    ids = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in ["is this safe ?", "no .", "never ."]}
    assert ids["no ."] == [vocab["no"], vocab["."]]

    def direct(response):
        sequence = torch.tensor([ids["is this safe ?"] + ids[response]])
        with torch.no_grad():
            hidden = model.transformer(sequence).last_hidden_state[0].double()  # after the final LayerNorm
        return hidden[3] + hidden[4]  # the positions predicting the two response tokens

    good, bad = direct("no ."), direct("never .")
    assert scores[0].item() == pytest.approx(float(good @ bad - good @ good), rel=1e-6)
    assert abs(scores[1].item()) < 1e-9  # y+ = y− gives 0


def test_single_pair_displacement_matches_training_each_pair_alone(tiny_model, tiny_pairs):
    train, _ = tiny_pairs
    pairs = PairSet(train.prompt[:3], train.chosen[:3], train.rejected[:3])
    cfg = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0)
    reference = tiny_model.eval().requires_grad_(False)
    batched = single_pair_displacement(reference, pairs, cfg, beta=0.5, steps=4, chunk=2)
    assert batched.shape == (3,)
    for i in range(3):
        batch = collate_pairs(pairs, np.array([i]))
        policy = copy.deepcopy(reference).requires_grad_(True)
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logps(reference(batch.tokens), batch.tokens, batch.response_mask)
        optimizer = make_optimizer(policy.parameters(), cfg)
        for _ in range(4):
            chosen, rejected = sequence_logps(policy(batch.tokens), batch.tokens, batch.response_mask)
            loss, _, _ = dpo_loss(chosen[None], rejected[None], ref_chosen[None], ref_rejected[None], 0.5)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        with torch.no_grad():
            after = sequence_logps(policy(batch.tokens), batch.tokens, batch.response_mask)[0]
        assert batched[i] == pytest.approx(float(after - ref_chosen), abs=1e-4)


def test_edit_similarity_and_hidden_cosine(tiny_model):
    assert edit_similarity("123", "124") == pytest.approx(2 / 3)
    assert edit_similarity("99", "100") == pytest.approx(0.0)
    assert edit_similarity("7", "7") == 1.0
    same = PairSet(np.array([5]), np.array([4]), np.array([4]))
    assert hidden_cosine(tiny_model, same).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("ches_sign", "edit_sign", "expected"),
    [(1, 0, "reproduced"), (1, 1, "partly"), (-1, 1, "not reproduced")],
)
def test_ches_claim_verdicts(ches_sign, edit_sign, expected):
    displacement = -np.arange(20.0)  # pair i displaces by i
    noise = np.random.default_rng(0).normal(size=20)
    table = pd.DataFrame(
        {
            "seed": 0,
            "displacement": displacement,
            "ches": ches_sign * np.arange(20.0) + (3 if edit_sign else 0.1) * noise,
            "edit": edit_sign * np.arange(20.0) + noise * (3 if edit_sign == 0 else 0.01),
            "cosine": noise,
        }
    )
    assert ches_claims(table)["verdict"].item() == expected


def test_ches_claim_is_untestable_where_no_pair_displaces():
    rises = np.arange(20.0)  # π(y+) rises for every pair; CHES ranks them perfectly (the old rule said reproduced)
    table = pd.DataFrame({"seed": 0, "displacement": rises, "ches": -rises, "edit": 0.0, "cosine": 0.0})
    claims = ches_claims(table)
    assert claims["verdict"].item() == "untestable here"
    assert "0%" in claims["precondition"].item()


def test_ches_first_but_weak_is_no_longer_partly():
    displacement = -np.arange(20.0)
    noise = np.random.default_rng(1).normal(size=20)
    table = pd.DataFrame({"seed": 0, "displacement": displacement, "ches": 0.2 * np.arange(20.0) + 6 * noise,
                          "edit": 0.0 * noise - 0.5 * np.arange(20.0), "cosine": -np.arange(20.0)})  # fmt: skip
    rho = ches_claims(table)
    assert rho["verdict"].item() == "not reproduced", rho["our_value"].item()


def test_pair_subset_is_a_seeded_sorted_draw_and_checks_its_size(tiny_data_cfg, tiny_pairs):
    train, _ = tiny_pairs
    subset = pair_subset(tiny_data_cfg, 10, seed=3)
    again = pair_subset(tiny_data_cfg, 10, seed=3)
    assert len(subset) == 10 and (subset.prompt == again.prompt).all() and (subset.chosen == again.chosen).all()
    assert (np.diff(subset.prompt) >= 0).all()  # in the training pairs' order
    assert {(p, c, r) for p, c, r in zip(subset.prompt, subset.chosen, subset.rejected, strict=True)} <= {
        (p, c, r) for p, c, r in zip(train.prompt, train.chosen, train.rejected, strict=True)
    }
    with pytest.raises(ValueError, match="n_pairs must be in"):
        pair_subset(tiny_data_cfg, len(train) + 1, seed=0)
