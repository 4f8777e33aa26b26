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

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.data import Batch, PairSet, collate_pairs
from dpo_toolkit.core.ensemble import Ensemble, model_device
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.optim import make_optimizer


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
    """CHES of every pair under `model`, in float64: (n,), on the CPU (computed on the model's device).

    Takes the pairs, or their ``collate_pairs`` batch (chosen rows, then rejected rows).
    """
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    device = model_device(model)
    hidden, _ = model.hidden(batch.tokens.to(device))  # (2n, seq, d)
    sums = response_hidden_sums(hidden.double(), batch.response_mask.to(device))
    chosen_sums, rejected_sums = sums.chunk(2)
    return ches_from_sums(chosen_sums, rejected_sums).cpu()


@torch.no_grad()
def normalized_ches(model: Transformer, pairs: PairSet | Batch) -> torch.Tensor:
    """Length-normalised CHES (Razin et al.): CHES of the *mean* hidden embeddings over each
    response's positions, ⟨h̄+, h̄−⟩ − ‖h̄+‖², so that long responses do not score high for
    their length alone: (n,), float64, on the CPU."""
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    device = model_device(model)
    hidden, _ = model.hidden(batch.tokens.to(device))  # (2n, seq, d)
    mask = batch.response_mask.to(device)
    means = response_hidden_sums(hidden.double(), mask) / mask.sum(1, keepdim=True).double()
    chosen_means, rejected_means = means.chunk(2)
    return ches_from_sums(chosen_means, rejected_means).cpu()


@torch.no_grad()
def hf_ches(model, tokenizer, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> torch.Tensor:
    """CHES of every (prompt, y+, y−) under a Hugging Face causal LM (on its own device), in float64: (n,), on the CPU.

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
            ids = torch.tensor([prompt_ids + response_ids], device=model.device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()  # (seq, d)
            sums.append(hidden[len(prompt_ids) - 1 : ids.shape[1] - 1].sum(0))
        scores.append(ches_from_sums(sums[0][None], sums[1][None])[0])
    return torch.stack(scores).cpu()


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


def pair_rows(pairs: PairSet | Batch, index: np.ndarray) -> Batch:
    """The pairs at `index` in ``collate_pairs`` layout (their chosen rows, then their rejected
    rows), from a PairSet or from a Batch already in that layout."""
    if isinstance(pairs, PairSet):
        return collate_pairs(pairs, index)
    n_pairs = len(pairs.tokens) // 2
    rows = np.concatenate([index, index + n_pairs])
    return Batch(pairs.tokens[rows], pairs.response_mask[rows])


def n_pairs_of(pairs: PairSet | Batch) -> int:
    return len(pairs) if isinstance(pairs, PairSet) else len(pairs.tokens) // 2


HEAD = ("ln_final", "unembed")  # the head: the final LayerNorm and the unembedding W


def single_pair_displacement(
    reference: Transformer,
    pairs: PairSet | Batch,
    cfg: TrainConfig,
    beta: float,
    steps: int,
    chunk: int = 128,
    frozen_head: bool = False,
) -> np.ndarray:
    """Likelihood displacement of each pair trained on alone: log π(y+) after `steps` DPO
    steps on that one pair (from the reference, optimizer of cfg) minus log π_ref(y+). (n,).

    Takes the pairs, or their batch in ``collate_pairs`` layout. The pairs train as
    independent models of one Ensemble, `chunk` at a time, on the reference's device. With
    `frozen_head`, the head (HEAD) keeps its weights and the body trains: the LM's "W fixed, h
    trained", the setting in which CHES is derived (Razin et al. §4).
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    out = []
    for start in range(0, n_pairs_of(pairs), chunk):
        index = np.arange(start, min(start + chunk, n_pairs_of(pairs)))
        batch = pair_rows(pairs, index)
        n = len(index)
        device = model_device(reference)
        tokens = torch.stack([batch.tokens[:n], batch.tokens[n:]], dim=1).to(device)  # (M, 2, T): chosen, rejected
        mask = torch.stack([batch.response_mask[:n], batch.response_mask[n:]], dim=1).to(device)  # (M, 2, T)
        with torch.no_grad():
            reference_logps = sequence_logps(reference(tokens.flatten(0, 1)), tokens.flatten(0, 1), mask.flatten(0, 1))
            reference_logps = reference_logps.view(n, 2)  # (M, 2)
        policies = Ensemble([reference] * n)
        trained = [p for name, p in policies.params.items() if not (frozen_head and name.startswith(HEAD))]
        optimizer = make_optimizer(trained, cfg)
        for _ in range(steps):
            logps = sequence_logps(policies(tokens), tokens, mask)  # (M, 2)
            losses, _, _ = dpo_loss(logps[:, 0], logps[:, 1], reference_logps[:, 0], reference_logps[:, 1], beta)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
        with torch.no_grad():
            chosen_after = sequence_logps(policies(tokens), tokens, mask)[:, 0]
        out.append((chosen_after - reference_logps[:, 0]).double().cpu().numpy())
    return np.concatenate(out)


def edit_similarity(a: str, b: str) -> float:
    """1 − Levenshtein distance / the longer length (the edit-distance similarity of Pal et al.)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1 - previous[-1] / max(len(a), len(b), 1)


@torch.no_grad()
def hidden_cosine(model: Transformer, pairs: PairSet | Batch) -> torch.Tensor:
    """Cosine similarity of the summed hidden embeddings of y+ and y− (not centred): (n,), on the CPU."""
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    device = model_device(model)
    hidden, _ = model.hidden(batch.tokens.to(device))
    chosen_sums, rejected_sums = response_hidden_sums(hidden.double(), batch.response_mask.to(device)).chunk(2)
    return torch.nn.functional.cosine_similarity(chosen_sums, rejected_sums, dim=-1).cpu()
