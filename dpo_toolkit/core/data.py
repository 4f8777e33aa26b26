"""The number-line preference set of Park §3.2, its tokenizer and batching.

Each sequence is "ABC=XYZ.": one token per digit of the prompt s, '=', one token
per digit of the response y, and '.' to end it. The prompt is not padded; the
concatenation is right-padded batchwise. The paper counts 12 tokens *including*
pad while naming 13 symbols, so pad shares the id of '.' (GPT-2's pad = eos
convention); every mask here is explicit, never inferred from the pad id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig

VOCAB = "0123456789=."
EQ = VOCAB.index("=")
END = VOCAB.index(".")
PAD = END


def encode_prompt(s: int) -> list[int]:
    """Token ids of 'ABC=' for a prompt s ≥ 0."""
    return [int(c) for c in str(s)] + [EQ]


def encode_response(y: int) -> list[int]:
    """Token ids of 'XYZ.' for a response y ≥ 0."""
    return [int(c) for c in str(y)] + [END]


def decode_response(token_ids: list[int] | torch.Tensor) -> int | None:
    """The integer a generated response spells, or None when it cannot be parsed.

    A parseable response is one or more digits followed by '.'; anything after the
    first '.' is ignored. No '.' at all, an '=' before it, or no digit is unparseable.
    """
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    if END not in ids:
        return None
    digits = ids[: ids.index(END)]
    if not digits or any(t > 9 for t in digits):
        return None
    return int("".join(str(t) for t in digits))


@dataclass(frozen=True)
class PairSet:
    """Preference tuples (s, y_w, y_l) as parallel integer arrays of shape (n,)."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt)

    @property
    def prompts(self) -> np.ndarray:
        """The distinct prompts, sorted."""
        return np.unique(self.prompt)


def make_pairs(cfg: DataConfig) -> tuple[PairSet, PairSet]:
    """All tuples (s, y_w, y_l) of Park §3.2, split into (train, test) by prompt.

    For each s in [prompt_min, prompt_max] and each adjacent pair (y, y+1) inside
    [max(s − W, 0), s + W], the one closer to s is preferred: 2W tuples per prompt
    away from 0. Prompts go to train or test as a whole; the split is a seeded
    random permutation with round(n_prompts · test_fraction) test prompts.
    """
    rows = []
    for s in range(cfg.prompt_min, cfg.prompt_max + 1):
        for y in range(max(s - cfg.window, 0), s + cfg.window):
            near, far = (y, y + 1) if abs(y - s) < abs(y + 1 - s) else (y + 1, y)
            rows.append((s, near, far))
    table = np.array(rows, dtype=np.int64)  # (n, 3)
    all_prompts = np.arange(cfg.prompt_min, cfg.prompt_max + 1)
    rng = np.random.default_rng(cfg.seed)
    n_test = round(len(all_prompts) * cfg.test_fraction)
    test_prompts = rng.permutation(all_prompts)[:n_test]
    is_test = np.isin(table[:, 0], test_prompts)

    def subset(mask: np.ndarray) -> PairSet:
        return PairSet(table[mask, 0], table[mask, 1], table[mask, 2])

    return subset(~is_test), subset(is_test)


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids and the mask of response positions."""

    tokens: torch.Tensor  # (batch, seq) int64
    response_mask: torch.Tensor  # (batch, seq) bool, True on response tokens incl. the final '.'

    def select(self, index: torch.Tensor | np.ndarray) -> Batch:
        """The chosen rows, trimmed to their longest sequence (batchwise right padding); an index of
        shape (M, rows) gives each model its own rows: tokens (M, rows, seq)."""
        response_mask = self.response_mask[index]  # (rows, seq) or (M, rows, seq)
        width = int(response_mask.reshape(-1, response_mask.shape[-1]).any(0).nonzero().max()) + 1
        return Batch(self.tokens[index][..., :width], response_mask[..., :width])


def collate(prompts: np.ndarray, responses: np.ndarray) -> Batch:
    """Tokenize (s, y) pairs into one batch, right-padded to its longest sequence."""
    seqs = [encode_prompt(s) + encode_response(y) for s, y in zip(prompts.tolist(), responses.tolist(), strict=True)]
    prompt_lengths = np.array([seq.index(EQ) + 1 for seq in seqs])
    lengths = np.array([len(seq) for seq in seqs])
    width = int(lengths.max())
    tokens = np.full((len(seqs), width), PAD, dtype=np.int64)
    for i, seq in enumerate(seqs):
        tokens[i, : len(seq)] = seq
    positions = np.arange(width)
    response_mask = (positions >= prompt_lengths[:, None]) & (positions < lengths[:, None])  # (batch, seq)
    return Batch(torch.from_numpy(tokens), torch.from_numpy(response_mask))


def collate_pairs(pairs: PairSet, index: np.ndarray | slice = slice(None)) -> Batch:
    """Chosen then rejected sequences of the selected pairs in one batch of 2·len(index)."""
    prompt = pairs.prompt[index]
    return collate(
        np.concatenate([prompt, prompt]),
        np.concatenate([pairs.chosen[index], pairs.rejected[index]]),
    )
