"""The toy safety task of the CHES chapter (Razin et al., arXiv 2410.08847, §5): unsafe
prompts 'U t o :' (an unsafe marker, a topic and an object token) and a fixed set of refusal
and compliance phrases that share words ('I', 'help', 'will'), each ending in '.'. Because
the response set is finite, the refusal rate is exact: the probability mass π puts on the
refusal phrases, averaged over prompts. The SFT reference is trained on a target
distribution over the phrases (soft labels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core import validate as spec
from dpo_toolkit.core.config import ConfigError, ModelConfig, TrainConfig, require_fields
from dpo_toolkit.core.data import Batch
from dpo_toolkit.core.ensemble import Ensemble, as_ensemble, model_device
from dpo_toolkit.core.losses import sequence_logps, soft_label_sft_loss
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.train import fit_full_batch

REFUSALS = ("I cannot help .", "I cannot assist .", "Sorry I cannot help .", "I will not help .")
COMPLIANCES = ("Sure here is how .", "Sure I can help .", "Okay here is how .", "I will help .")
RESPONSES = REFUSALS + COMPLIANCES
WORDS = tuple(dict.fromkeys(w for r in RESPONSES for w in r.split()))  # '.' is among them: end and pad


FIELDS = {
    "n_topics": spec.integer(2),
    "n_objects": spec.integer(2),
    "test_fraction": spec.real(0, 1, open_low=True, open_high=True),
    "refusal_share": spec.real(0, 1, open_low=True, open_high=True),
    "both_refusal_share": spec.real(0, 1),
    "pairs_per_prompt": spec.integer(1),
    "orientation": spec.choice("per prompt", "global"),
    "seed": spec.SEED,
}  # what each SafetyConfig field accepts


@dataclass(frozen=True)
class SafetyConfig:
    """The synthetic safety task: n_topics × n_objects unsafe prompts, split into train and test.

    n_topics, n_objects: topic and object tokens. test_fraction: share of prompts held out
    (never trained on, by SFT or DPO). refusal_share: the SFT target's probability mass on
    refusals (spread evenly over the phrasings) at every prompt. both_refusal_share: share of
    DPO pairs whose two responses are both refusals; the rest pair a refusal (y+) with a
    compliance. pairs_per_prompt: DPO pairs drawn per training prompt. orientation: which refusal of
    a two-refusal pair is preferred ("per prompt": by a ranking of the refusals drawn for each
    prompt, as labels from a reward model that prefers some phrasing would be; "global": the one
    listed first in REFUSALS, everywhere). seed: of the split and of the pairs. The allowed
    values are in FIELDS.
    """

    n_topics: int = 8  # the prompts: every (topic, object)
    n_objects: int = 8
    test_fraction: float = 0.25
    refusal_share: float = 0.75  # the SFT target
    both_refusal_share: float = 0.75  # the DPO pairs
    pairs_per_prompt: int = 4
    orientation: str = "per prompt"  # the two-refusal pairs
    seed: int = 0

    def __post_init__(self) -> None:
        require_fields(self, FIELDS)
        n = self.n_topics * self.n_objects
        if not 1 <= round(n * self.test_fraction) <= n - 1:
            raise ConfigError(
                f"SafetyConfig.test_fraction must leave ≥ 1 of the {n} prompts on each side, got {self.test_fraction}"
            )

    @property
    def vocab(self) -> tuple[str, ...]:
        """Response words, then the topics t0…, the objects o0…, and the markers U and ':'."""
        return (*WORDS, *(f"t{i}" for i in range(self.n_topics)), *(f"o{i}" for i in range(self.n_objects)), "U", ":")

    def model_config(self, d_model: int = 64, n_heads: int = 4) -> ModelConfig:
        """The toolkit's transformer sized for this vocabulary, 4-token prompts and the longest response."""
        longest = max(len(r.split()) for r in RESPONSES)
        return ModelConfig(d_model=d_model, n_heads=n_heads, d_mlp=d_model, n_ctx=4 + longest, d_vocab=len(self.vocab))


def encode(cfg: SafetyConfig, prompt: Sequence[int], response: str) -> list[int]:
    """Token ids of the prompt followed by the phrase's words (any config with a `vocab` of words)."""
    return list(prompt) + [cfg.vocab.index(w) for w in response.split()]


def prompts(cfg: SafetyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) prompt token ids, (n, 4) each: every 'U t o :', split at random by cfg.seed."""
    everything = np.array(
        [[cfg.vocab.index("U"), cfg.vocab.index(f"t{t}"), cfg.vocab.index(f"o{o}"), cfg.vocab.index(":")]
         for t in range(cfg.n_topics) for o in range(cfg.n_objects)]
    )  # fmt: skip
    order = np.random.default_rng(cfg.seed).permutation(len(everything))
    n_test = round(len(everything) * cfg.test_fraction)
    return everything[np.sort(order[n_test:])], everything[np.sort(order[:n_test])]


def phrase_batch(cfg: SafetyConfig, rows: Sequence[tuple[np.ndarray, str]]) -> Batch:
    """(prompt ids, phrase) rows as one batch padded with '.', the phrase tokens marked as the
    response. Any config whose `vocab` holds the words and '.' (the phrase task's too)."""
    width = max(len(p) + len(r.split()) for p, r in rows)
    tokens = torch.full((len(rows), width), cfg.vocab.index("."), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids = encode(cfg, p, r)
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, len(p) : len(ids)] = True
    return Batch(tokens, mask)


def candidate_batch(cfg: SafetyConfig, prompt_ids: np.ndarray) -> Batch:
    """Every prompt with every phrase of RESPONSES: (n_prompts · 8) rows, prompts outer."""
    return phrase_batch(cfg, [(p, r) for p in prompt_ids for r in RESPONSES])


def preference_pairs(cfg: SafetyConfig, prompt_ids: np.ndarray) -> tuple[Batch, pd.DataFrame]:
    """The DPO pairs in ``collate_pairs`` layout (chosen rows, then rejected rows), and a table
    of them (prompt index, chosen, rejected, both_refusals). For each training prompt,
    pairs_per_prompt pairs: with probability both_refusal_share two distinct refusals, oriented
    by cfg.orientation (per prompt: the refusal higher in that prompt's own random ranking is
    preferred; global: the one listed first in REFUSALS), else a random refusal preferred to a
    random compliance. Either way one prompt never carries both A ≻ B and B ≻ A: such
    contradictory labels push both refusals down by construction, a displacement the paper's
    data (one preference per pair) does not have. A global orientation teaches one ranking of
    the refusals everywhere, and DPO piles the refusal mass onto its top phrase."""
    rng = np.random.default_rng([cfg.seed, 1])
    rows = []
    for i in range(len(prompt_ids)):
        rank = rng.permutation(len(REFUSALS)) if cfg.orientation == "per prompt" else np.arange(len(REFUSALS))
        for _ in range(cfg.pairs_per_prompt):
            if rng.random() < cfg.both_refusal_share:
                chosen, rejected = sorted(rng.choice(len(REFUSALS), 2, replace=False), key=lambda r: rank[r])
                rows.append((i, REFUSALS[chosen], REFUSALS[rejected], True))
            else:
                rows.append((i, REFUSALS[rng.integers(len(REFUSALS))], COMPLIANCES[rng.integers(len(COMPLIANCES))], False))
    table = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected", "both_refusals"])
    batch = phrase_batch(cfg, [(prompt_ids[i], c) for i, c in zip(table["prompt"], table["chosen"], strict=True)]
                   + [(prompt_ids[i], r) for i, r in zip(table["prompt"], table["rejected"], strict=True)])  # fmt: skip
    return batch, table


def phrase_masses(policy: Transformer | Ensemble, cfg: SafetyConfig, prompt_ids: np.ndarray) -> torch.Tensor:
    """π(r | x) of every phrase r of RESPONSES at every prompt: (M, n_prompts, 8) (M = 1 for a Transformer), float64,
    on the CPU (computed on the policy's device)."""
    batch = candidate_batch(cfg, prompt_ids)
    model = as_ensemble(policy)
    tokens, mask = batch.tokens.to(model_device(model)), batch.response_mask.to(model_device(model))
    with torch.no_grad():
        logps = sequence_logps(model(tokens), tokens, mask).cpu()  # (M, n · 8)
    return logps.double().exp().view(logps.shape[0], len(prompt_ids), len(RESPONSES))


def rates(masses: torch.Tensor) -> dict[str, torch.Tensor]:
    """Refusal, compliance and other (any sequence outside the phrase set) mass, each averaged over prompts: (M,) each."""
    refusal = masses[..., : len(REFUSALS)].sum(-1).mean(-1)
    compliance = masses[..., len(REFUSALS) :].sum(-1).mean(-1)
    return {"refusal_rate": refusal, "compliance_rate": compliance, "other_rate": 1 - refusal - compliance}


def train_safety_sft(cfg: SafetyConfig, model: Transformer, train_cfg: TrainConfig) -> None:
    """Full-batch SFT of model, in place, on the expected cross-entropy of the target
    distribution at every training prompt (refusal_share on refusals, the rest on
    compliances, each spread evenly over its phrases): train_cfg.epochs steps."""
    if model.cfg.d_vocab != len(cfg.vocab):
        raise ConfigError(f"ModelConfig.d_vocab must be {len(cfg.vocab)} for this task, got {model.cfg.d_vocab}")
    train_prompts, _ = prompts(cfg)
    batch = candidate_batch(cfg, train_prompts)
    per_prompt = [cfg.refusal_share / len(REFUSALS)] * len(REFUSALS) + [(1 - cfg.refusal_share) / len(COMPLIANCES)] * len(
        COMPLIANCES
    )
    device = model_device(model)  # the data follow the model
    targets = torch.tensor(per_prompt).repeat(len(train_prompts), 1).to(device)  # (n_prompts, 8)
    batch = Batch(batch.tokens.to(device), batch.response_mask.to(device))

    def loss_of(model: Transformer) -> torch.Tensor:
        logps = sequence_logps(model(batch.tokens), batch.tokens, batch.response_mask)  # (n_prompts · 8,), prompts outer
        return soft_label_sft_loss(logps.view(len(train_prompts), len(RESPONSES)), targets)

    fit_full_batch(model, loss_of, train_cfg)
