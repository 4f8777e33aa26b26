"""The vanishing-gradients study (Razin et al., ICLR 2024) on the enumerable RL task of
``rft.py``: pretrain a policy that is confidently wrong on part of the prompts, optionally
SFT it, then RL fine-tune it with exact expected gradients, recording V_x, the reward
std and the exact ‖∇V_x‖ of every prompt at every evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core import parameters as p
from dpo_toolkit.core import validate as v
from dpo_toolkit.core.config import ModelConfig, RLTaskConfig, SmallSFTConfig, TrainConfig
from dpo_toolkit.core.data import Batch
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.runner import RunKey, cached_frames, cached_model
from dpo_toolkit.core.storage import write_csv
from dpo_toolkit.core.train import Checkpoint, train_sft
from dpo_toolkit.core.validate import seed_list
from dpo_toolkit.studies.vanishing_gradients.bound import bound_ratio, gamma_exact, gamma_lower
from dpo_toolkit.studies.vanishing_gradients.rft import (
    RESPONSE_LENGTH,
    all_responses,
    closeness_reward,
    label_batch,
    pretrain_labels,
    response_logps,
    split_prompts,
    targets,
    train_rft,
    value_and_std,
    value_gradient_norms,
)

ARMS = ("no SFT", "full SFT", "small SFT")  # the starting points of RL fine-tuning, in Ensemble order


SMALL_STD = 0.05  # a reward std below this counts as small


LOW_REWARD = 0.8  # an expected reward below this counts as low (off by more than 10 on average)


def _phase(name: str, epochs: v.Spec = p.EPOCHS) -> dict[str, v.Spec]:
    """The specs of one training phase's `<name>_epochs` and `<name>_lr`."""
    return {f"{name}_epochs": epochs, f"{name}_lr": p.LEARNING_RATE}


# The notebook's `parameters` cell, one spec per variable (notebooks/vanishing_gradients.md).
PARAMETERS = {
    "prompt_min": RLTaskConfig.FIELDS["prompt_min"],
    "prompt_max": v.integer(100, 999),
    "test_fraction": RLTaskConfig.FIELDS["test_fraction"],
    "hard_fraction": RLTaskConfig.FIELDS["hard_fraction"],
    "shift": RLTaskConfig.FIELDS["shift"],
    "wrong_labels": RLTaskConfig.FIELDS["wrong_labels"],
    "task_seed": v.SEED,
    "seeds": p.SEEDS,
    **_phase("pretrain", v.integer(1, 4000)),  # default: 400 epochs
    **_phase("sft"),
    **dict.fromkeys(("label_fraction", "step_fraction"), v.real(0, 1, open_low=True)),  # the small SFT's shares
    **_phase("rft"),
    "batch_size": p.BATCH_SIZE,
    "n_evals": p.EVALS,
    "results_root": p.RESULTS_ROOT,
    "device": p.DEVICE,
}


def check_parameters(values) -> None:
    """Check the vanishing-gradients notebook's parameters (PARAMETERS) and the rules between them."""
    p.check(PARAMETERS, values)
    if values["prompt_max"] < values["prompt_min"]:
        p.fail("prompt_max", f"an integer in [prompt_min = {values['prompt_min']}, 999]", values["prompt_max"])
    n_prompts = values["prompt_max"] - values["prompt_min"] + 1
    n_test = round(n_prompts * values["test_fraction"])
    if n_test in (0, n_prompts):
        p.fail(
            "test_fraction",
            f"a share leaving ≥ 1 prompt in train and in test of the {n_prompts} prompts",
            values["test_fraction"],
        )
    total = p.steps(n_prompts - n_test, values["batch_size"], values["rft_epochs"])
    epochs, batch_size = values["rft_epochs"], values["batch_size"]
    in_words = f"RL fine-tuning ({epochs} epochs of {n_prompts - n_test} training prompts in batches of {batch_size})"
    p.check_evals("n_evals", values["n_evals"], total, in_words)


def small_sft_config(sft_cfg: TrainConfig, n_train: int, n_small: int, fix: SmallSFTConfig) -> TrainConfig:
    """The TrainConfig of the cheap SFT phase: n_small samples, batch ≤ n_small, and the
    epochs that give the nearest whole number of steps to step_fraction × full SFT's steps."""
    full_steps = sft_cfg.epochs * math.ceil(n_train / sft_cfg.batch_size)
    batch_size = min(sft_cfg.batch_size, n_small)
    epochs = max(1, round(fix.step_fraction * full_steps / math.ceil(n_small / batch_size)))
    return dataclasses.replace(sft_cfg, batch_size=batch_size, epochs=epochs, n_evals=min(sft_cfg.n_evals, epochs))


def no_evaluation(model) -> dict:
    """SFT phases are judged by the RFT probe at step 0, not during SFT."""
    return {}


class Probe:
    """The RFT evaluation: mean rewards per model, and per-prompt V_x, std and (on training
    prompts) the exact ‖∇V_x‖, all in float64, stamped with the step by ``stamp``.

    With `partial`, the rows stamped so far are written there (atomically) at every stamp and
    read back on construction, so a resumed run keeps the rows of the evaluations it skips."""

    def __init__(
        self, policies: Ensemble, prompts: np.ndarray, is_train: np.ndarray, is_hard: np.ndarray, partial: Path | None = None
    ):
        self.policies, self.prompts, self.is_train, self.is_hard = policies, prompts, is_train, is_hard
        self.responses = all_responses(policies.cfg.d_vocab)
        self.rewards = closeness_reward(prompts, self.responses)  # (n, R)
        self.partial = partial
        self.rows: list[pd.DataFrame] = [pd.read_csv(partial)] if partial is not None and partial.exists() else []
        self._pending: pd.DataFrame | None = None

    def __call__(self) -> list[dict]:
        train = self.is_train
        frames, values, stds = [], [], []
        for i, arm in enumerate(ARMS):
            # float64: near-deterministic policies have gradients and stds below float32's resolution
            model = self.policies.member(i).double()
            value_i, std_i = value_and_std(response_logps(model, self.prompts), self.rewards)  # (n,)
            values.append(value_i)
            stds.append(std_i)
            grad_norm = np.full(len(self.prompts), np.nan)
            grad_norm[train] = value_gradient_norms(model, self.prompts[train], self.rewards[train])
            gamma_low, gamma = _gammas(model, self.prompts, train, grad_norm, std_i.numpy())
            frames.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "prompt": self.prompts,
                        "split": np.where(train, "train", "test"),
                        "hard": self.is_hard,
                        "value": value_i.numpy(),
                        "std": std_i.numpy(),
                        "grad_norm": grad_norm,
                        "gamma_low": gamma_low,
                        "gamma": gamma,
                    }
                )
            )
        self._pending = pd.concat(frames, ignore_index=True)
        value, std = torch.stack(values), torch.stack(stds)  # (M, n)
        small_low = (std < SMALL_STD) & (value < LOW_REWARD)
        return [
            {
                "reward_train": float(value[i, train].mean()),
                "reward_test": float(value[i, ~train].mean()),
                "small_std_low_reward": int(small_low[i, train].sum()),
            }
            for i in range(len(ARMS))
        ]

    def stamp(self, step: int) -> None:
        self.rows.append(self._pending.assign(step=step))
        if self.partial is not None:
            write_csv(self.table(), self.partial)

    def table(self) -> pd.DataFrame:
        """Every stamped row; a step stamped twice (a resumed run redoing the evaluation after its
        checkpoint) keeps its last stamp."""
        return pd.concat(self.rows, ignore_index=True).drop_duplicates(["arm", "prompt", "step"], keep="last")


def _gammas(model: Transformer, prompts: np.ndarray, train: np.ndarray, grad_norm: np.ndarray, std: np.ndarray):
    """γ(x; θ) of Theorem 1 (``bound``) on the training prompts: from below on every one
    (`gamma_low`), exactly on the one whose conservative bound ratio is largest (`gamma`, NaN on
    the others: the exact value costs 13 Jacobians). Both (n,), NaN on test prompts."""
    gamma_low, gamma = np.full(len(prompts), np.nan), np.full(len(prompts), np.nan)
    gamma_low[train] = gamma_lower(model, prompts[train])
    ratio = bound_ratio(grad_norm, std, gamma_low, RESPONSE_LENGTH)
    if np.isfinite(ratio).any():
        tightest = int(np.nanargmax(ratio))
        gamma[tightest] = gamma_exact(model, int(prompts[tightest]))
    return gamma_low, gamma


PARTIAL = "-inputs.partial.csv"  # the RFT probe's rows so far, kept for a resumed run (``Probe``)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the runs of every seed share: the configurations, the run cache, the device."""

    task_cfg: RLTaskConfig
    model_cfg: ModelConfig
    pretrain_cfg: TrainConfig
    sft_cfg: TrainConfig
    fix: SmallSFTConfig
    rft_cfg: TrainConfig
    cache_dir: Path
    progress: bool | None
    device: torch.device

    def sft(self, start: Transformer, name: str, data: Batch, cfg: TrainConfig, seed: int, *depends_on) -> Transformer:
        """A copy of start after SFT on data, cached by everything it depends on; a killed run resumes."""
        cfg = dataclasses.replace(cfg, seed=seed)

        def fit(model: Transformer, checkpoint: Checkpoint) -> None:
            train_sft(model.train().requires_grad_(True), data, cfg, no_evaluation, self.progress, checkpoint)

        key = RunKey(self.cache_dir, name, seed, (self.task_cfg, self.model_cfg, *depends_on, cfg))
        return cached_model(key, lambda: copy.deepcopy(start), fit)[0]

    def starting_points(self, seed: int, prompts: np.ndarray, train: np.ndarray, hard: np.ndarray) -> list[Transformer]:
        """One seed's starting points of RL fine-tuning, in ARMS order: the pretrained policy (shifted
        labels on the hard prompts), it after SFT on every training label, and after the small SFT."""
        pretrain_data = label_batch(prompts, pretrain_labels(self.task_cfg, prompts, hard))
        pretrained = self.sft(build_model(self.model_cfg, seed, self.device), "pretrain", pretrain_data, self.pretrain_cfg, seed)
        full = self.sft(pretrained, "full-sft", label_batch(train, targets(train)), self.sft_cfg, seed, self.pretrain_cfg)
        n_small = max(1, round(self.fix.label_fraction * len(train)))
        labelled = np.sort(np.random.default_rng(seed).choice(train, n_small, replace=False))
        small_cfg = small_sft_config(self.sft_cfg, len(train), n_small, self.fix)
        small_data = label_batch(labelled, targets(labelled))
        small = self.sft(pretrained, "small-sft", small_data, small_cfg, seed, self.pretrain_cfg, self.fix)
        return [pretrained, full, small]

    def rft(self, seed: int, prompts: np.ndarray, train: np.ndarray, hard: np.ndarray) -> list[pd.DataFrame]:
        """One seed's RL fine-tuning of its starting points as one ensemble: [curve, inputs], cached
        in the run cache (``runner.cached_frames``); a killed run resumes, its probe rows kept."""
        starts = self.starting_points(seed, prompts, train, hard)
        configs = (self.task_cfg, self.model_cfg, self.pretrain_cfg, self.sft_cfg, self.fix, self.rft_cfg)
        key = RunKey(self.cache_dir, "rft", seed, configs, self.device.type)

        def compute(checkpoint: Checkpoint) -> tuple[pd.DataFrame, pd.DataFrame]:
            policies = Ensemble(starts)
            probe = Probe(policies, prompts, np.isin(prompts, train), np.isin(prompts, hard), key.path(PARTIAL))
            rewards = closeness_reward(train, all_responses(self.model_cfg.d_vocab))
            cfg = dataclasses.replace(self.rft_cfg, seed=seed)
            curve = train_rft(policies, train, rewards, cfg, probe, probe.stamp, self.progress, checkpoint)
            return curve.assign(arm=curve["member"].map(dict(enumerate(ARMS)))).drop(columns="member"), probe.table()

        return cached_frames(key, ("-curves.csv", "-inputs.csv"), compute, scratch=(PARTIAL,))


def run_vanishing_gradients(
    task_cfg: RLTaskConfig,
    model_cfg: ModelConfig,
    pretrain_cfg: TrainConfig,
    sft_cfg: TrainConfig,
    fix: SmallSFTConfig,
    rft_cfg: TrainConfig,
    seeds: Iterable[int],
    cache_dir: str | Path,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each seed: pretrain (shifted labels on the hard prompts), then the three starting
    points of ARMS (no SFT; SFT on every training label; SFT on `fix`'s share of labels and
    steps), then RL fine-tuning of all three as one ensemble with exact expected gradients.

    The seed sets the initialisation, the batch orders and the labelled subset of the
    small SFT; the split and the hard prompts are fixed by task_cfg.seed. Every model trains
    and is probed on `device`. Results are cached under cache_dir by seed, device type and a
    hash of every configuration.
    Returns (curves, inputs): one row per RFT evaluation and arm (mean rewards, count of
    small-std low-reward training prompts), and one row per evaluation, arm and prompt
    (value, std, grad_norm, gamma_low, gamma, split, hard; ``Probe``).
    """
    device = resolve_device(device)
    seeds = seed_list(seeds)
    setup = _Setup(task_cfg, model_cfg, pretrain_cfg, sft_cfg, fix, rft_cfg, Path(cache_dir), progress, device)
    train, test, hard = split_prompts(task_cfg)
    prompts = np.sort(np.concatenate([train, test]))
    curves, inputs = [], []
    for seed in seeds:
        curve, inputs_of_seed = setup.rft(seed, prompts, train, hard)
        curves.append(curve.assign(seed=seed))
        inputs.append(inputs_of_seed.assign(seed=seed))
    return pd.concat(curves, ignore_index=True), pd.concat(inputs, ignore_index=True)
