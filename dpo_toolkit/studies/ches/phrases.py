"""CHES where pairs displace: a preference task with multi-token responses drawn from groups
of synonymous phrasings (Razin et al., arXiv 2410.08847, §4; Razin's talk, 'Identifying
sources').

Prompts are 'Q s A' for statements s with a stance (agree, disagree, hedge), as in the
likelihood-displacement chapter's persona corpus, but the answers are phrases of one to
three words ending in '.', and no two phrases share a first word, so no pair shares a prefix
(on the number line adjacent numbers share leading digits, whose DPO gradient cancels).
The reference is fitted to put `lead_weight` on the lead phrase of each statement's stance
(high, as in the talk's examples) and the rest on the other phrases of that group. Each
training pair prefers that lead phrase (y+) to one other phrase (y−): a synonym from the
same group, or a phrase of another meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core import validate as spec
from dpo_toolkit.core.config import ConfigError, ModelConfig, TrainConfig, require_fields
from dpo_toolkit.core.data import Batch
from dpo_toolkit.core.ensemble import Ensemble, model_device
from dpo_toolkit.core.losses import dpo_loss, sequence_logps, soft_label_sft_loss
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.core.train import fit_full_batch
from dpo_toolkit.studies.ches.safety_task import phrase_batch

PHRASE_GROUPS: dict[str, tuple[str, ...]] = {
    "agree": ("yes .", "sure thing .", "of course yes .", "certainly ."),
    "disagree": ("no .", "never ever .", "not at all .", "nope ."),
    "hedge": ("maybe .", "perhaps not .", "possibly so .", "unclear ."),
}
"""Answers by meaning; the first of each group is its lead phrase. First words are all distinct."""
PHRASES = tuple(p for group in PHRASE_GROUPS.values() for p in group)
MEANING = {p: g for g, group in PHRASE_GROUPS.items() for p in group}
WORDS = tuple(dict.fromkeys(w for p in PHRASES for w in p.split()))  # '.' is among them: end and pad

FIELDS = {
    "n_statements": spec.integer(6),
    "hedge_fraction": spec.real(0, 0.5),
    "lead_weight": spec.real(0, 1, open_low=True, open_high=True),
    "seed": spec.SEED,
}  # what each PhraseConfig field accepts


@dataclass(frozen=True)
class PhraseConfig:
    """The phrase task: n_statements prompts 'Q s A'; a seeded hedge_fraction of statements
    hedge, the rest split evenly between agree and disagree; the reference's target puts
    lead_weight on the stance's lead phrase and shares the rest among the group's others."""

    n_statements: int = 48
    hedge_fraction: float = 0.2
    lead_weight: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        require_fields(self, FIELDS)

    @property
    def vocab(self) -> tuple[str, ...]:
        """Phrase words, then the statements s0, s1, …, then the markers Q and A."""
        return (*WORDS, *(f"s{i}" for i in range(self.n_statements)), "Q", "A")

    def model_config(self, d_model: int = 64, n_heads: int = 4) -> ModelConfig:
        """The toolkit's transformer sized for this vocabulary, 3-token prompts and the longest phrase."""
        longest = max(len(p.split()) for p in PHRASES)
        return ModelConfig(d_model=d_model, n_heads=n_heads, d_mlp=d_model, n_ctx=3 + longest, d_vocab=len(self.vocab))


def statements(cfg: PhraseConfig) -> tuple[np.ndarray, np.ndarray]:
    """(prompts (n, 3) token ids 'Q s A', stance of each statement (n,))."""
    rng = np.random.default_rng(cfg.seed)
    n_hedge = round(cfg.n_statements * cfg.hedge_fraction)
    n_agree = (cfg.n_statements - n_hedge + 1) // 2
    stances = rng.permutation(
        np.array(["agree"] * n_agree + ["disagree"] * (cfg.n_statements - n_hedge - n_agree) + ["hedge"] * n_hedge)
    )
    prompts = np.array([[cfg.vocab.index("Q"), cfg.vocab.index(f"s{i}"), cfg.vocab.index("A")] for i in range(cfg.n_statements)])
    return prompts, stances


def targets(cfg: PhraseConfig, stances: np.ndarray) -> torch.Tensor:
    """The reference's target distribution over PHRASES at each statement: (n, 12)."""
    out = torch.zeros(len(stances), len(PHRASES), dtype=torch.float64)
    for i, stance in enumerate(stances):
        group = PHRASE_GROUPS[stance]
        for k, phrase in enumerate(group):
            out[i, PHRASES.index(phrase)] = cfg.lead_weight if k == 0 else (1 - cfg.lead_weight) / (len(group) - 1)
    return out


def train_phrase_reference(cfg: PhraseConfig, model: Transformer, train_cfg: TrainConfig) -> None:
    """Full-batch SFT of model, in place, on the expected cross-entropy of ``targets`` at every
    statement (soft labels over the twelve phrases): train_cfg.epochs steps."""
    if model.cfg.d_vocab != len(cfg.vocab):
        raise ConfigError(f"ModelConfig.d_vocab must be {len(cfg.vocab)} for this task, got {model.cfg.d_vocab}")
    prompts, stances = statements(cfg)
    device = model_device(model)  # the data follow the model
    batch = phrase_batch(cfg, [(p, r) for p in prompts for r in PHRASES])
    tokens, mask = batch.tokens.to(device), batch.response_mask.to(device)
    goal = targets(cfg, stances).float().to(device)  # (n, 12)

    def loss_of(m: Transformer) -> torch.Tensor:
        logps = sequence_logps(m(tokens), tokens, mask)  # (n · 12,), statements outer
        return soft_label_sft_loss(logps.view(len(prompts), len(PHRASES)), goal)

    fit_full_batch(model, loss_of, train_cfg)


def phrase_pairs(cfg: PhraseConfig) -> tuple[Batch, pd.DataFrame]:
    """Every training pair, in ``collate_pairs`` layout (chosen rows, then rejected rows), and a
    table of them (statement, chosen, rejected, same_meaning): at each statement, its stance's
    lead phrase preferred to each of the eleven other phrases."""
    prompts, stances = statements(cfg)
    rows = [
        (i, PHRASE_GROUPS[stance][0], other, MEANING[other] == stance)
        for i, stance in enumerate(stances)
        for other in PHRASES
        if other != PHRASE_GROUPS[stance][0]
    ]
    table = pd.DataFrame(rows, columns=["statement", "chosen", "rejected", "same_meaning"])
    batch = phrase_batch(
        cfg,
        [(prompts[i], c) for i, c in zip(table["statement"], table["chosen"], strict=True)]
        + [(prompts[i], r) for i, r in zip(table["statement"], table["rejected"], strict=True)],
    )
    return batch, table


SUBSETS = ("lowest", "median", "highest")


def subset_indices(scores: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The paper's protocol: the `size` pairs with the lowest, the median and the highest
    scores (ties broken by position). The three subsets are disjoint when size ≤ n / 3."""
    if not 1 <= size <= len(scores) // 3:
        raise ValueError(f"size must be in [1, {len(scores) // 3}] (a third of the {len(scores)} pairs), got {size}")
    order = np.argsort(scores, kind="stable")
    middle = (len(scores) - size) // 2
    return {"lowest": order[:size], "median": order[middle : middle + size], "highest": order[len(scores) - size :]}


@torch.no_grad()
def chosen_ceilings(reference: Transformer, batch: Batch) -> np.ndarray:
    """log(1/π_ref(y+)) of every pair of `batch` (``collate_pairs`` layout): the most log π(y+) can
    rise, the ceiling a protocol's gain is read against. (n_pairs,)."""
    n_pairs = len(batch.tokens) // 2
    device = model_device(reference)
    tokens, mask = batch.tokens[:n_pairs].to(device), batch.response_mask[:n_pairs].to(device)
    return (-sequence_logps(reference(tokens), tokens, mask)).double().cpu().numpy()


def subset_displacement(
    reference: Transformer, batch: Batch, subsets: dict[str, np.ndarray], cfg: TrainConfig, beta: float, steps: int
) -> dict[str, float]:
    """DPO on each subset alone (full batch, `steps` steps of cfg's optimizer, from the
    reference; the subsets train as the members of one Ensemble), and the mean change of
    log π(y+) over that subset's preferred responses."""
    n_pairs = len(batch.tokens) // 2
    device = model_device(reference)
    names = list(subsets)
    rows = [np.concatenate([subsets[k], subsets[k] + n_pairs]) for k in names]  # chosen rows, then rejected rows
    tokens = torch.stack([batch.tokens[r] for r in rows]).to(device)  # (M, 2k, T)
    mask = torch.stack([batch.response_mask[r] for r in rows]).to(device)
    size = len(subsets[names[0]])
    with torch.no_grad():
        reference_logps = sequence_logps(reference(tokens.flatten(0, 1)), tokens.flatten(0, 1), mask.flatten(0, 1))
        reference_logps = reference_logps.view(len(names), 2 * size)  # (M, 2k)
    policies = Ensemble([reference] * len(names))
    optimizer = make_optimizer(list(policies.params.values()), cfg)
    for _ in range(steps):
        logps = sequence_logps(policies(tokens), tokens, mask)  # (M, 2k)
        losses, _, _ = dpo_loss(logps[:, :size], logps[:, size:], reference_logps[:, :size], reference_logps[:, size:], beta)
        optimizer.zero_grad(set_to_none=True)
        losses.mean(-1).sum().backward()
        optimizer.step()
    with torch.no_grad():
        change = sequence_logps(policies(tokens), tokens, mask)[:, :size] - reference_logps[:, :size]  # (M, k)
    return {name: float(change[m].double().mean()) for m, name in enumerate(names)}
