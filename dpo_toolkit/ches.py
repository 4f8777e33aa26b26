"""The Centered Hidden Embedding Similarity score of Razin et al. (arXiv 2410.08847):

    CHES_x(y+, y−) = ⟨Σ_k h_{x, y+_<k}, Σ_k' h_{x, y−_<k'}⟩ − ‖Σ_k h_{x, y+_<k}‖²,

where h_{x, y_<k} is the last hidden embedding at the position that predicts the k-th
response token (the prompt's last position for k = 1). A high CHES predicts that DPO on
the pair lowers the likelihood of y+. Sums are over every response token, the end
token included (no length normalisation).

``ches`` takes the toolkit's transformer; ``hf_ches`` any Hugging Face causal LM with its
tokenizer (the optional extra ``pip install .[hf]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import Batch, PairSet, collate_pairs
from .model import Transformer


def ches_from_sums(chosen_sums: torch.Tensor, rejected_sums: torch.Tensor) -> torch.Tensor:
    """CHES from the summed hidden embeddings of y+ and y− ((n, d) each): (n,)."""
    return (chosen_sums * rejected_sums).sum(-1) - (chosen_sums * chosen_sums).sum(-1)


def response_hidden_sums(hidden: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Σ over response tokens t of the hidden embedding at t − 1 (the position predicting t).

    hidden: (n, seq, d); response_mask: (n, seq), True on response tokens. Returns (n, d).
    """
    predicting = response_mask[:, 1:, None].to(hidden.dtype)  # position t − 1 predicts token t
    return (hidden[:, :-1] * predicting).sum(1)


@torch.no_grad()
def ches(model: Transformer, pairs: PairSet | Batch) -> torch.Tensor:
    """CHES of every pair under `model`, in float64: (n,).

    Takes the pairs, or their ``collate_pairs`` batch (chosen rows, then rejected rows).
    """
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    hidden, _ = model.hidden(batch.tokens)  # (2n, seq, d)
    sums = response_hidden_sums(hidden.double(), batch.response_mask)
    chosen_sums, rejected_sums = sums.chunk(2)
    return ches_from_sums(chosen_sums, rejected_sums)


@torch.no_grad()
def hf_ches(model, tokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> torch.Tensor:
    """CHES of every (prompt, y+, y−) under a Hugging Face causal LM, in float64: (n,).

    Each response is tokenized on its own and appended to the tokenized prompt (no special
    tokens), so that the response tokens are exactly those of the response; h is the last
    entry of `hidden_states` (after the final norm in GPT-2-style models).
    """
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"hf_ches needs one y+ and one y− per prompt: {len(prompts)}, {len(chosen)}, {len(rejected)}")
    scores = []
    for prompt, good, bad in zip(prompts, chosen, rejected, strict=True):
        sums = []
        for response in (good, bad):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            if not prompt_ids or not response_ids:
                raise ValueError(f"hf_ches needs a non-empty prompt and response, got {prompt!r} → {response!r}")
            ids = torch.tensor([prompt_ids + response_ids])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()  # (seq, d)
            sums.append(hidden[len(prompt_ids) - 1 : ids.shape[1] - 1].sum(0))
        scores.append(ches_from_sums(sums[0][None], sums[1][None])[0])
    return torch.stack(scores)


def ches_filter(scores: np.ndarray | torch.Tensor, drop_fraction: float) -> np.ndarray:
    """Boolean mask keeping the pairs whose CHES is below the (1 − drop_fraction) quantile,
    i.e. dropping the top drop_fraction of pairs by CHES. Ties at the threshold are dropped."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= drop_fraction < 1:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    if drop_fraction == 0:
        return np.ones(len(scores), dtype=bool)
    n_drop = round(drop_fraction * len(scores))
    threshold = np.sort(scores)[len(scores) - n_drop] if n_drop else np.inf
    return scores < threshold
