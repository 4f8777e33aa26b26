"""The synthetic persona corpus: statements that get single-token answers from synonym groups
(yes-like, no-like, hedges), and the tiny causal LM (the toolkit's transformer) trained on
its exact answer distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dpo_toolkit.core.config import ConfigError, ModelConfig, TrainConfig, require
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.losses import soft_label_sft_loss
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.train import fit_full_batch
from dpo_toolkit.core.validate import is_int, is_real

# Answer tokens by meaning; the first of each group is the most frequent in the corpus.
ANSWER_GROUPS: dict[str, tuple[str, ...]] = {
    "agree": ("Yes", "yes", "Sure", "Yeah"),
    "disagree": ("No", "no", "Never", "Nope"),
    "hedge": ("Maybe", "Perhaps"),
}


ANSWERS = tuple(t for group in ANSWER_GROUPS.values() for t in group)


GROUP_OF = {t: g for g, tokens in ANSWER_GROUPS.items() for t in tokens}


TABLE_PAIRS = (("Yes", "No"), ("No", "Never"), ("Sure", "Yes"))  # the rows of the talk's table


@dataclass(frozen=True)
class PersonaConfig:
    """The synthetic persona corpus: prompts 'Q s A' for statements s, each with a stance
    (agree, disagree or hedge) whose answer is drawn from that stance's synonym group."""

    n_statements: int = 60
    """Statements (one token each). Must be ≥ 6."""
    hedge_fraction: float = 0.2
    """Share of statements whose stance is to hedge. Must be in [0, 0.5]."""
    lead_weight: float = 0.55
    """Probability of the first token of the stance's group; the rest share 1 − lead_weight. Must be in (0, 1)."""
    seed: int = 0
    """Seed of the statements' stances. Must be ≥ 0."""

    def __post_init__(self) -> None:
        require(is_int(self.n_statements) and self.n_statements >= 6, self, "n_statements", "an integer ≥ 6")
        require(is_real(self.hedge_fraction) and 0 <= self.hedge_fraction <= 0.5, self, "hedge_fraction", "a number in [0, 0.5]")
        require(is_real(self.lead_weight) and 0 < self.lead_weight < 1, self, "lead_weight", "a number in (0, 1)")
        require(is_int(self.seed) and self.seed >= 0, self, "seed", "an integer ≥ 0")

    @property
    def vocab(self) -> tuple[str, ...]:
        """Answer tokens, then the statements s0, s1, …, then the markers Q and A."""
        return (*ANSWERS, *(f"s{i}" for i in range(self.n_statements)), "Q", "A")

    def token(self, name: str) -> int:
        return self.vocab.index(name)

    def model_config(self, d_model: int = 64, n_heads: int = 4) -> ModelConfig:
        """The toolkit's transformer sized for this vocabulary and 3-token prompts."""
        return ModelConfig(d_model=d_model, n_heads=n_heads, d_mlp=d_model, n_ctx=4, d_vocab=len(self.vocab))


def persona_corpus(cfg: PersonaConfig) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(prompts (n, 3) token ids 'Q s A', stance per statement (n,), answer distribution (n, V)).

    Stances: a seeded hedge_fraction of statements hedge, the rest split evenly between
    agree and disagree. Within a stance's group the first token has lead_weight.
    """
    rng = np.random.default_rng(cfg.seed)
    n_hedge = round(cfg.n_statements * cfg.hedge_fraction)
    n_agree = (cfg.n_statements - n_hedge + 1) // 2
    stances = np.array(["agree"] * n_agree + ["disagree"] * (cfg.n_statements - n_hedge - n_agree) + ["hedge"] * n_hedge)
    stances = rng.permutation(stances)
    V = len(cfg.vocab)
    targets = torch.zeros(cfg.n_statements, V, dtype=torch.float64)
    for i, stance in enumerate(stances):
        group = ANSWER_GROUPS[stance]
        rest = (1 - cfg.lead_weight) / (len(group) - 1)
        for k, t in enumerate(group):
            targets[i, cfg.token(t)] = cfg.lead_weight if k == 0 else rest
    prompts = torch.tensor([[cfg.token("Q"), cfg.token(f"s{i}"), cfg.token("A")] for i in range(cfg.n_statements)])
    return prompts, stances, targets


def answer_logps(model: Transformer | Ensemble, prompts: torch.Tensor) -> torch.Tensor:
    """log π(· | prompt) at the answer position, over the whole vocabulary: (n, V) for one model, (M, n, V)
    for an Ensemble (prompts (n, T) shared by its members, or (M, n, T) one set per member)."""
    return model(prompts)[..., -1, :].log_softmax(-1)


def train_persona_lms(cfgs: Sequence[PersonaConfig], models: Sequence[Transformer], train_cfg: TrainConfig) -> None:
    """Full-batch SFT of models[i], in place, on the expected cross-entropy of corpus cfgs[i] (soft labels:
    the exact answer distribution of each statement): train_cfg.epochs steps. The models train as the
    members of one Ensemble on the sum of their losses (replicates as members), which equals one model at
    a time up to float rounding. The models share one ModelConfig (an Ensemble's), so the corpora share one
    vocabulary, hence their statements; they may differ in lead_weight and seed."""
    if len(cfgs) != len(models):
        raise ValueError(f"one corpus per model: {len(cfgs)} corpora for {len(models)} models")
    for cfg, model in zip(cfgs, models, strict=True):
        if model.cfg.d_vocab != len(cfg.vocab) or model.cfg.n_ctx < 3:
            raise ConfigError(f"ModelConfig must have d_vocab={len(cfg.vocab)} and n_ctx ≥ 3 for this corpus, got {model.cfg}")
    corpora = [persona_corpus(cfg) for cfg in cfgs]
    prompts = corpora[0][0]  # (n, 3): 'Q s A' for every statement, the same in every corpus of this vocabulary
    device = next(models[0].parameters()).device  # the corpus follows the models
    prompts = prompts.to(device)
    targets = torch.stack([t for _, _, t in corpora]).float().to(device)  # (M, n, V)
    lms = Ensemble(list(models))

    def loss_of(ensemble: Ensemble) -> torch.Tensor:  # each member's loss, summed: its own gradient
        return soft_label_sft_loss(answer_logps(ensemble, prompts), targets).sum()

    fit_full_batch(lms, loss_of, train_cfg, [{"params": list(lms.params.values())}])
    for i, model in enumerate(models):
        model.load_state_dict(lms.member(i).state_dict())


def train_persona_lm(cfg: PersonaConfig, model: Transformer, train_cfg: TrainConfig) -> None:
    """``train_persona_lms`` of one model on corpus cfg."""
    train_persona_lms([cfg], [model], train_cfg)
