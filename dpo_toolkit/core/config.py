"""Frozen, self-validating configuration for data, model, training and evaluation.

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError`
(a ``ValueError``) that names the class, the field and the allowed range, before
any work starts. Change a field with ``dataclasses.replace(cfg, beta=0.5)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from .validate import SEED, Spec, choice, integer, real

OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
"""The optimizers a TrainConfig names (``core.optim`` builds them)."""


# Each field's allowed values are declared once, in its class's FIELDS (a ``validate.Spec``, which
# also words the error); rules between fields are in ``__post_init__``.


class ConfigError(ValueError):
    """A configuration value outside its allowed range."""


def require_fields(obj: object, specs: Mapping[str, Spec] | None = None) -> None:
    """Check each field of obj against its Spec (default: its class's FIELDS, every range written
    once there): the table-driven form of ``require``."""
    for field, spec in (type(obj).FIELDS if specs is None else specs).items():
        require(spec.accepts(getattr(obj, field)), obj, field, spec.describe())


def require(ok: bool, obj: object, field: str, allowed: str) -> None:
    """Raise ConfigError naming type(obj), field, the allowed range and the value, unless ok."""
    if not ok:
        value = getattr(obj, field)
        raise ConfigError(f"{type(obj).__name__}.{field} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """The number-line preference set of Park §3.2."""

    prompt_min: int = 1
    """Smallest prompt s in S = [prompt_min, prompt_max]."""
    prompt_max: int = 99
    """Largest prompt s, ≥ prompt_min (``__post_init__``); the model's context caps it
    (``check_fits``: 9,994 with W = 5 and the 10 positions of Park's model)."""
    window: int = 5
    """Window W: responses lie in [s − W, s + W] (clipped at 0)."""
    test_fraction: float = 0.3
    """Fraction of prompts held out for the test set."""
    seed: int = 0
    """Seed of the random train/test split by prompt."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "prompt_min": integer(0),
        "window": integer(1),
        "test_fraction": real(0, 1, open_low=True, open_high=True),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        require_fields(self)
        prompt_max = integer(self.prompt_min, 99_999)
        require(prompt_max.accepts(self.prompt_max), self, "prompt_max", f"an integer in [prompt_min={self.prompt_min}, 99999]")
        n_prompts = self.prompt_max - self.prompt_min + 1
        require(
            round(n_prompts * self.test_fraction) >= 1 and round(n_prompts * (1 - self.test_fraction)) >= 1,
            self,
            "test_fraction",
            f"a fraction leaving ≥ 1 prompt on each side of the split of {n_prompts} prompts",
        )

    @property
    def max_seq_len(self) -> int:
        """Longest tokenized 'ABC=XYZ.' sequence of this data set."""
        return len(str(self.prompt_max)) + 1 + len(str(self.prompt_max + self.window)) + 1


@dataclass(frozen=True)
class ModelConfig:
    """The 1-layer decoder-only transformer of Park §3.3."""

    d_model: int = 128
    """Residual stream width, divisible by n_heads (``__post_init__``)."""
    n_heads: int = 4
    """Attention heads."""
    d_mlp: int = 128
    """Hidden width of the 2-layer GELU MLP."""
    n_ctx: int = 10
    """Learned positions, i.e. the longest sequence."""
    d_vocab: int = 12
    """Vocabulary: 10 digits, '=' and '.', with '.' doubling as pad."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "n_heads": integer(1),
        "d_mlp": integer(1),
        "n_ctx": integer(4),
        "d_vocab": integer(12),
    }

    def __post_init__(self) -> None:
        require_fields(self)
        require(
            integer(1).accepts(self.d_model) and self.d_model % self.n_heads == 0,
            self,
            "d_model",
            f"a positive integer divisible by n_heads={self.n_heads}",
        )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one SFT or DPO run."""

    optimizer: str = "adamw"
    """One of 'adamw', 'adam', 'rmsprop', 'sgd' (torch defaults apart from lr and weight_decay; SGD without momentum)."""
    lr: float = 1e-4
    """Learning rate."""
    weight_decay: float = 0.01
    """Weight decay (decoupled for AdamW, L2 otherwise). 0.01 is AdamW's standard."""
    epochs: int = 100
    """Passes over the training pairs."""
    batch_size: int = 512
    """Examples (SFT) or pairs (DPO) per step."""
    grad_clip: float | None = 5.0
    """Max global gradient norm, or None for no clipping."""
    n_evals: int = 100
    """Evaluations spread evenly over training, after an extra one at step 0."""
    seed: int = 0
    """Seed of the batch order (and, for SFT, of the model initialisation)."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "optimizer": choice(*OPTIMIZERS),
        "lr": real(0, 1, open_low=True),
        "weight_decay": real(0),
        "epochs": integer(1),
        "batch_size": integer(1),
        "grad_clip": real(0, open_low=True, optional=True),
        "n_evals": integer(1),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        require_fields(self)


@dataclass(frozen=True)
class RLTaskConfig:
    """The enumerable RL fine-tuning task of the vanishing-gradients chapter.

    Prompts are 3-digit numbers s; a response is exactly two tokens, read as a 2-digit
    number, and its target is s mod 100. A seeded `hard_fraction` of the prompts is
    pretrained on wrong labels, at least `shift` from the target, so that the pretrained policy
    is confidently wrong there: each hard prompt's own shift, drawn from [shift, 100 − shift]
    (`wrong_labels` "per prompt"), or `shift` for all of them ("shared shift", where progress on
    one hard prompt can fix the others by undoing the one shared rule).
    """

    prompt_min: int = 100
    """Smallest prompt."""
    prompt_max: int = 499
    """Largest prompt, ≥ prompt_min and three digits (``__post_init__``)."""
    test_fraction: float = 0.5
    """Fraction of prompts held out from SFT and RL fine-tuning."""
    hard_fraction: float = 0.5
    """Fraction of prompts pretrained on shifted labels."""
    shift: int = 30
    """Smallest label shift (mod 100) on the hard prompts: reward ≤ 1 − shift/50 there."""
    wrong_labels: str = "per prompt"
    """"per prompt": each hard prompt's shift drawn from [shift, 100 − shift]; "shared shift": all `shift`."""
    seed: int = 0
    """Seed of the split, of the choice of hard prompts and of their shifts."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "prompt_min": integer(100, 999),
        "test_fraction": real(0, 1, open_low=True, open_high=True),
        "hard_fraction": real(0, 1),
        "shift": integer(1, 50),
        "wrong_labels": choice("per prompt", "shared shift"),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        require_fields(self)
        prompt_max = integer(self.prompt_min, 999)
        require(prompt_max.accepts(self.prompt_max), self, "prompt_max", f"an integer in [prompt_min={self.prompt_min}, 999]")
        n_prompts = self.prompt_max - self.prompt_min + 1
        require(
            round(n_prompts * self.test_fraction) not in (0, n_prompts),
            self,
            "test_fraction",
            f"a fraction that leaves ≥ 1 prompt in train and in test of the {n_prompts} prompts",
        )


@dataclass(frozen=True)
class SmallSFTConfig:
    """The cheap SFT phase of Razin et al.: a fraction of the labelled samples, trained for
    a fraction of the steps of full SFT."""

    label_fraction: float = 0.01
    """Share of the labelled training prompts used."""
    step_fraction: float = 0.4
    """Optimizer steps, as a share of full SFT's."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "label_fraction": real(0, 1, open_low=True),
        "step_fraction": real(0, 1, open_low=True),
    }

    def __post_init__(self) -> None:
        require_fields(self)


@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    """A DPO run: optimisation plus the KL strength β."""

    beta: float = 0.1
    """KL strength β (Park Eq. 1–2)."""

    FIELDS: ClassVar[dict[str, Spec]] = {**TrainConfig.FIELDS, "beta": real(0, 1000, open_low=True)}

    @classmethod
    def from_train(cls, cfg: TrainConfig, **changes) -> DPOConfig:
        """The DPO run with cfg's optimisation settings (an SFT config, say), then `changes`:
        ``DPOConfig.from_train(sft_cfg, epochs=10, beta=0.5)``. Validated like any DPOConfig."""
        return cls(**{**dataclasses.asdict(cfg), **changes})


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation computes."""

    kl_samples: int = 16
    """Responses sampled from the policy per test prompt for the KL estimate (Eq. 6)."""
    max_pairs: int | None = None
    """Test pairs scored for accuracy and margin: all when None, else a fixed random subset of this size (≥ 1)."""
    seed: int = 0
    """Seed of the KL sampling and of the pair subset."""

    FIELDS: ClassVar[dict[str, Spec]] = {
        "kl_samples": integer(2),
        "max_pairs": integer(1, optional=True),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        require_fields(self)


def check_fits(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    """Raise ConfigError when the data's longest sequence exceeds the model's context."""
    if data_cfg.max_seq_len > model_cfg.n_ctx:
        raise ConfigError(
            f"ModelConfig.n_ctx must be ≥ {data_cfg.max_seq_len}, the longest sequence of "
            f"DataConfig(prompt_max={data_cfg.prompt_max}, window={data_cfg.window}); got {model_cfg.n_ctx}"
        )


def config_hash(*configs: object) -> str:
    """A short stable hash of dataclass configs, used to key cached results."""
    payload = json.dumps([[type(c).__name__, dataclasses.asdict(c)] for c in configs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
