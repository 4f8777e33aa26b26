import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

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


@pytest.mark.parametrize("frozen_head", [False, True])
def test_single_pair_displacement_matches_training_each_pair_alone(tiny_model, tiny_pairs, frozen_head):
    train, _ = tiny_pairs
    pairs = PairSet(train.prompt[:3], train.chosen[:3], train.rejected[:3])
    cfg = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0)
    reference = tiny_model.eval().requires_grad_(False)
    batched = single_pair_displacement(reference, pairs, cfg, beta=0.5, steps=4, chunk=2, frozen_head=frozen_head)
    other = single_pair_displacement(reference, pairs, cfg, beta=0.5, steps=4, chunk=2, frozen_head=not frozen_head)
    assert batched.shape == (3,) and np.abs(batched - other).max() > 1e-3  # freezing the head changes the runs
    for i in range(3):
        batch = collate_pairs(pairs, np.array([i]))
        policy = copy.deepcopy(reference).requires_grad_(True)
        if frozen_head:  # the final LayerNorm and the unembedding keep their weights; the body trains
            policy.ln_final.requires_grad_(False)
            policy.unembed.requires_grad_(False)
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logps(reference(batch.tokens), batch.tokens, batch.response_mask)
        optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg)
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


DISPLACING = -np.arange(20.0)  # pair i displaces by i: every pair but the first, 95 %


def _table(per_seed: list[dict[str, np.ndarray]], displacement: np.ndarray = DISPLACING) -> pd.DataFrame:
    """Hand-made score_pairs output: one seed per entry of per_seed, its scores given."""
    frames = [pd.DataFrame({"seed": s, "displacement": displacement, **scores}) for s, scores in enumerate(per_seed)]
    return pd.concat(frames, ignore_index=True)


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=20)


def _rho(score: np.ndarray, displacement: np.ndarray = DISPLACING) -> float:
    return float(stats.spearmanr(score, -displacement).statistic)


# CHES ranks −Δ exactly in every seed (ρ 1), edit similarity inversely (ρ −1), cosine is constant (ρ read as 0)
PERFECT = [{"ches": np.arange(20.0) + 0.01 * _noise(s), "edit": -np.arange(20.0), "cosine": np.zeros(20)} for s in range(3)]


def test_ches_claim_reproduced_on_three_seeds():
    row = ches_claims(_table(PERFECT)).iloc[0]
    assert row["verdict"] == "reproduced" and row["n"] == "3"
    assert (row["estimate"], row["ci_low"], row["ci_high"], row["threshold"]) == ("1", "1", "1", "0.3")
    assert "Decided: reproduced" in row["our_value"] and "95%" in row["precondition"]


def test_ches_claim_partly_when_an_alternative_ranks_better_in_every_seed():
    # edit similarity ranks −Δ exactly (ρ 1); CHES, noisy, ranks it well (ρ ≥ 0.3) but worse
    seeds = [{"ches": np.arange(20.0) + 4 * _noise(s), "edit": np.arange(20.0), "cosine": _noise(10 + s)} for s in range(4)]
    rho = [_rho(scores["ches"]) for scores in seeds]
    assert min(rho) > 0.5 and max(rho) < 1  # the inputs are what the test means
    row = ches_claims(_table(seeds)).iloc[0]
    assert row["verdict"] == "partly"
    assert float(row["estimate"]) == pytest.approx(np.mean(rho) - 1, abs=5e-4)  # the deciding check: ρ(CHES) − ρ(edit)
    assert row["threshold"] == "0"


def test_ches_claim_not_reproduced_when_ches_ranks_backwards():
    seeds = [{"ches": -np.arange(20.0), "edit": _noise(s), "cosine": _noise(10 + s)} for s in range(3)]
    row = ches_claims(_table(seeds)).iloc[0]
    assert row["verdict"] == "not reproduced" and row["estimate"] == "-1"


def test_ches_claim_inconclusive_on_two_seeds_and_on_seeds_that_disagree():
    two = ches_claims(_table(PERFECT[:2])).iloc[0]
    assert two["verdict"] == "inconclusive" and two["n"] == "2"
    # ρ(CHES) = 1, −1, 1: mean 1/3, its interval straddles 0.3
    signs = [1, -1, 1]
    disagree = [{"ches": sign * np.arange(20.0), "edit": np.zeros(20), "cosine": np.zeros(20)} for sign in signs]
    row = ches_claims(_table(disagree)).iloc[0]
    assert row["verdict"] == "inconclusive" and float(row["estimate"]) == pytest.approx(1 / 3, abs=1e-3)
    assert float(row["ci_low"]) < 0.3 < float(row["ci_high"])


def test_ches_claim_is_untestable_where_no_pair_displaces():
    rises = np.arange(20.0)  # π(y+) rises for every pair; CHES ranks them perfectly (the old rule said reproduced)
    seeds = [{"ches": -rises, "edit": np.zeros(20), "cosine": np.zeros(20)} for _ in range(3)]
    claims = ches_claims(_table(seeds, displacement=rises))
    assert claims["verdict"].item() == "untestable here"
    assert "0%" in claims["precondition"].item()


def test_ches_first_but_weak_is_no_longer_partly():
    displacement = -np.arange(20.0)
    seeds = [{"ches": 0.2 * np.arange(20.0) + 10 * _noise(s), "edit": -0.5 * np.arange(20.0), "cosine": -np.arange(20.0)}
             for s in range(1, 6)]  # fmt: skip
    rho = [_rho(scores["ches"]) for scores in seeds]
    assert max(rho) < 0.3  # weak in every seed, yet first in every seed (both others are −1)
    row = ches_claims(_table(seeds, displacement)).iloc[0]
    assert row["verdict"] == "not reproduced", row["our_value"]
    assert float(row["estimate"]) == pytest.approx(np.mean(rho), abs=5e-4)


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


def test_c11_is_decided_on_plain_sgd_where_the_pairs_were_also_trained_by_it():
    # Adam displaces and CHES ranks its displacement perfectly; SGD displaces no pair: C11 cannot be tested
    adam_only = _table(PERFECT).assign(displacement_sgd=np.tile(np.arange(20.0) + 1, 3))
    row = ches_claims(adam_only).iloc[0]
    assert row["verdict"] == "untestable here"
    assert row["precondition"] == "π(y+) falls under plain SGD for ≥ 20% of the scored pairs (mean over seeds): 0%"
    assert "under the chapter's optimizer (an optimizer effect, not deciding): CHES +1.00" in row["our_value"]
    # SGD displaces every pair but one, in the order CHES gives: reproduced on SGD's displacement
    both = _table(PERFECT).assign(displacement_sgd=np.tile(DISPLACING, 3))
    assert ches_claims(both).iloc[0]["verdict"] == "reproduced"
    # SGD displaces, but backwards to CHES: not reproduced, whatever Adam's ranking
    backwards = _table(PERFECT).assign(displacement_sgd=np.tile(np.arange(20.0) - 20, 3))  # pair i falls by 20 − i
    row = ches_claims(backwards).iloc[0]
    assert row["verdict"] == "not reproduced" and row["estimate"] == "-1" and "plain SGD" in row["our_value"]


def test_c11_prefers_plain_sgd_with_the_head_frozen_where_it_was_run():
    # SGD with the head trained displaces nothing; with the head frozen every pair but one falls, in CHES's order
    frozen = _table(PERFECT).assign(displacement_sgd=np.tile(np.arange(20.0) + 1, 3),
                                    displacement_sgd_frozen=np.tile(DISPLACING, 3))  # fmt: skip
    row = ches_claims(frozen).iloc[0]
    assert row["verdict"] == "reproduced" and "plain SGD, head frozen" in row["our_value"]
    assert row["precondition"].startswith("π(y+) falls under plain SGD, head frozen for ≥ 20%")
    assert "with the head trained π(y+) fell for 0% of pairs" in row["our_value"]
