import numpy as np
import pytest
import torch

from dpo_toolkit.ches import ches, ches_filter, ches_from_sums, hf_ches, response_hidden_sums
from dpo_toolkit.data import PairSet, collate_pairs


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
