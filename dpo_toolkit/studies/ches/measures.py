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
import pandas as pd
import torch

from dpo_toolkit.core.claims import claims_frame
from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.data import Batch, PairSet, collate_pairs
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.core.parameters import (
    BATCH_SIZE,
    BETA,
    EPOCHS,
    LEARNING_RATE,
    NUMBER_LINE,
    RESULTS_ROOT,
    SEEDS,
    check,
    check_evals,
    fail,
    integer,
    number_line_config,
    real,
    reals,
    steps,
)
from dpo_toolkit.core.stats import spearman

# The notebook's `parameters` cell, one spec per variable (notebooks/ches.md).
PARAMETERS = {
    "seeds": SEEDS,
    **NUMBER_LINE,
    "sft_epochs": EPOCHS,
    "sft_lr": LEARNING_RATE,
    "batch_size": BATCH_SIZE,
    "n_pairs": integer(1),
    "pair_seed": integer(0),
    "beta": BETA,
    "dpo_steps": EPOCHS,
    "dpo_lr": LEARNING_RATE,
    "mitigation_beta": BETA,
    "mitigation_epochs": EPOCHS,
    "mitigation_lr": LEARNING_RATE,
    "mitigation_evals": integer(1),
    "kl_samples": integer(2),
    "drop_fractions": reals(0, 1, open_low=True, open_high=True),
    "sft_weights": reals(0, open_low=True),
    "grokking_beta": BETA,
    "grokking_dpo_epochs": EPOCHS,
    "safety_refusal_share": real(0, 1, open_low=True, open_high=True),
    "safety_both_refusal_share": real(0, 1),
    "safety_sft_steps": EPOCHS,
    "safety_beta": BETA,
    "safety_lr": LEARNING_RATE,
    "safety_epochs": EPOCHS,
    "results_root": RESULTS_ROOT,
}
SAFETY_EVALS = 20  # evaluations over the toy safety task's DPO run
SAFETY_BATCH = 16  # its DPO batch size


def check_parameters(values) -> None:
    """Check the CHES notebook's parameters (PARAMETERS) and the rules between them: n_pairs
    fits the training pairs, and no run has more evaluations than optimizer steps."""
    from dpo_toolkit.core.data import make_pairs
    from dpo_toolkit.studies.ches.safety import SafetyConfig, preference_pairs, prompts  # safety builds on this module

    check(PARAMETERS, values)
    train, _ = make_pairs(number_line_config(values))
    if values["n_pairs"] > len(train):
        fail("n_pairs", f"≤ {len(train)}, the training pairs", values["n_pairs"])
    total = steps(len(train), values["batch_size"], values["mitigation_epochs"])
    in_words = f"C12's DPO ({values['mitigation_epochs']} epochs of {len(train)} pairs in batches of {values['batch_size']})"
    check_evals("mitigation_evals", values["mitigation_evals"], total, in_words)
    safety = SafetyConfig(refusal_share=values["safety_refusal_share"], both_refusal_share=values["safety_both_refusal_share"])
    n_safety = len(preference_pairs(safety, prompts(safety)[0])[1])
    if steps(n_safety, SAFETY_BATCH, values["safety_epochs"]) < SAFETY_EVALS:
        least = -(-SAFETY_EVALS // steps(n_safety, SAFETY_BATCH))
        allowed = f"≥ {least}, so that the toy safety task's {SAFETY_EVALS} evaluations fit its optimizer steps"
        fail("safety_epochs", allowed, values["safety_epochs"])


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


def single_pair_displacement(
    reference: Transformer, pairs: PairSet, cfg: TrainConfig, beta: float, steps: int, chunk: int = 128
) -> np.ndarray:
    """Likelihood displacement of each pair trained on alone: log π(y+) after `steps` DPO
    steps on that one pair (from the reference, optimizer of cfg) minus log π_ref(y+). (n,).

    The pairs train as independent models of one Ensemble, `chunk` at a time.
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    out = []
    for start in range(0, len(pairs), chunk):
        index = np.arange(start, min(start + chunk, len(pairs)))
        batch = collate_pairs(pairs, index)
        n = len(index)
        tokens = torch.stack([batch.tokens[:n], batch.tokens[n:]], dim=1)  # (M, 2, T): chosen, rejected
        mask = torch.stack([batch.response_mask[:n], batch.response_mask[n:]], dim=1)  # (M, 2, T)
        with torch.no_grad():
            reference_logps = sequence_logps(reference(tokens.flatten(0, 1)), tokens.flatten(0, 1), mask.flatten(0, 1))
            reference_logps = reference_logps.view(n, 2)  # (M, 2)
        policies = Ensemble([reference] * n)
        optimizer = make_optimizer(list(policies.params.values()), cfg)
        for _ in range(steps):
            logps = sequence_logps(policies(tokens), tokens, mask)  # (M, 2)
            losses, _, _ = dpo_loss(logps[:, 0], logps[:, 1], reference_logps[:, 0], reference_logps[:, 1], beta)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
        with torch.no_grad():
            chosen_after = sequence_logps(policies(tokens), tokens, mask)[:, 0]
        out.append((chosen_after - reference_logps[:, 0]).double().numpy())
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
def hidden_cosine(model: Transformer, pairs: PairSet) -> torch.Tensor:
    """Cosine similarity of the summed hidden embeddings of y+ and y− (not centred): (n,)."""
    batch = collate_pairs(pairs)
    hidden, _ = model.hidden(batch.tokens)
    chosen_sums, rejected_sums = response_hidden_sums(hidden.double(), batch.response_mask).chunk(2)
    return torch.nn.functional.cosine_similarity(chosen_sums, rejected_sums, dim=-1)


MEASURES = {"ches": "CHES", "edit": "edit-distance similarity", "cosine": "hidden-embedding cosine"}
RANK_CORRELATION = 0.3  # C11: Spearman(score, −displacement) that counts as "identifies"


def ches_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The C11 claims table from one row per (seed, pair) with columns seed, displacement
    (``single_pair_displacement``) and one column per measure of MEASURES. Each measure's
    Spearman correlation with −displacement is taken per seed, then averaged."""
    rho = pd.DataFrame(
        {m: table.groupby("seed").apply(lambda g, m=m: spearman(g[m], -g["displacement"]), include_groups=False)
         for m in MEASURES}
    )  # fmt: skip
    mean, spread = rho.mean(), rho.std(ddof=0)
    best = mean.idxmax()
    strong, first = mean["ches"] >= RANK_CORRELATION, best == "ches"
    verdict = "reproduced" if strong and first else "partly" if strong or first else "not reproduced"
    ours = "; ".join(f"{MEASURES[m]} {mean[m]:+.2f} ± {spread[m]:.2f}" for m in MEASURES)
    return claims_frame(
        [
            {
                "claim_id": "C11",
                "statement": "The CHES score identifies the training pairs that cause likelihood displacement; "
                "edit-distance and hidden-embedding similarity do not.",
                "paper_value": "CHES ranks displacing pairs first; the alternatives do not (talk, 'Identifying sources')",
                "our_value": f"Spearman(score, −Δ log π(y+)) over {len(table) // table['seed'].nunique()} pairs, "
                f"mean ± sd over {table['seed'].nunique()} seeds: {ours}; π(y+) fell for "
                f"{(table['displacement'] < 0).mean():.0%} of pairs",
                "verdict": verdict,
            }
        ]
    )
