import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import DataConfig
from dpo_toolkit.core.data import (
    END,
    EQ,
    PAD,
    collate,
    collate_pairs,
    decode_response,
    encode_prompt,
    encode_response,
    make_pairs,
)


def test_tokenizer_spells_abc_eq_xyz_dot():
    assert encode_prompt(507) == [5, 0, 7, EQ]
    assert encode_response(12) == [1, 2, END]
    assert PAD == END and EQ == 10 and END == 11


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([1, 2, END], 12),
        ([0, END], 0),
        ([4, 2, END, 7, 7], 42),  # anything after the first '.' is ignored
        ([END], None),  # no digit
        ([1, 2], None),  # never ended
        ([1, EQ, 2, END], None),  # '=' inside the number
        ([], None),
    ],
)
def test_decode_response(tokens, expected):
    assert decode_response(tokens) == expected
    assert decode_response(torch.tensor(tokens, dtype=torch.long)) == expected


def test_counts_and_preference_direction():
    cfg = DataConfig(prompt_min=10, prompt_max=30, window=3, test_fraction=0.25, seed=1)
    train, test = make_pairs(cfg)
    assert len(train) + len(test) == 21 * 2 * 3  # 2W adjacent pairs per prompt, no clipping here
    for pairs in (train, test):
        assert np.all(np.abs(pairs.chosen - pairs.prompt) < np.abs(pairs.rejected - pairs.prompt))
        assert np.all(np.abs(pairs.chosen - pairs.rejected) == 1)
        assert np.all(np.abs(pairs.rejected - pairs.prompt) <= cfg.window)


def test_paper_settings_counts():
    train, test = make_pairs(DataConfig(prompt_min=1, prompt_max=99, window=5, test_fraction=0.3))
    assert len(train) + len(test) == 99 * 10 - (4 + 3 + 2 + 1)  # responses clipped at 0 for s < 5
    assert (len(train.prompts), len(test.prompts)) == (69, 30)
    train, test = make_pairs(DataConfig(prompt_min=100, prompt_max=500, window=10, test_fraction=0.5))
    assert len(train) + len(test) == 401 * 20


def test_split_is_by_prompt_and_seeded():
    cfg = DataConfig(prompt_min=1, prompt_max=50, window=2, test_fraction=0.4, seed=3)
    train, test = make_pairs(cfg)
    assert not set(train.prompts) & set(test.prompts)
    assert len(test.prompts) == 20
    again, _ = make_pairs(cfg)
    assert np.array_equal(train.prompt, again.prompt)
    other, _ = make_pairs(DataConfig(prompt_min=1, prompt_max=50, window=2, test_fraction=0.4, seed=4))
    assert not np.array_equal(np.unique(train.prompt), np.unique(other.prompt))


def test_collate_right_pads_batchwise_with_explicit_mask():
    batch = collate(np.array([5, 123]), np.array([7, 1000]))
    assert batch.tokens.tolist() == [
        [5, EQ, 7, END, PAD, PAD, PAD, PAD, PAD],
        [1, 2, 3, EQ, 1, 0, 0, 0, END],
    ]
    assert batch.response_mask.tolist() == [
        [False, False, True, True, False, False, False, False, False],
        [False, False, False, False, True, True, True, True, True],
    ]


def test_select_trims_to_longest_selected_sequence():
    batch = collate(np.array([5, 123, 6]), np.array([7, 1000, 8]))
    sub = batch.select(torch.tensor([0, 2]))
    assert sub.tokens.shape == (2, 4)
    assert sub.tokens.tolist() == [[5, EQ, 7, END], [6, EQ, 8, END]]


def test_collate_pairs_stacks_chosen_then_rejected(tiny_pairs):
    train, _ = tiny_pairs
    batch = collate_pairs(train)
    n = len(train)
    assert batch.tokens.shape[0] == 2 * n
    first_chosen = [t for t, m in zip(batch.tokens[0].tolist(), batch.response_mask[0].tolist(), strict=True) if m]
    first_rejected = [t for t, m in zip(batch.tokens[n].tolist(), batch.response_mask[n].tolist(), strict=True) if m]
    assert decode_response(first_chosen) == train.chosen[0]
    assert decode_response(first_rejected) == train.rejected[0]
