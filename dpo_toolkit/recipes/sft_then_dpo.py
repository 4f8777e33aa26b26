"""Park et al.'s recipe on the number line (§3.3), through the runner: for each seed one SFT
reference, then DPO at every β as one batched ensemble. Four chapters and the CHES
mitigation runs start from it.

Everything is cached under ``cache_dir`` (see ``runner``): the SFT model and curve, and each
seed's DPO curves; a run killed at any point resumes and ends with an unbroken run's numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig, check_fits
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.metrics import TRL_NAMES, group_weight_deltas
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.runner import Member, RunKey, cached_model, run_dpo
from dpo_toolkit.core.train import train_sft
from dpo_toolkit.core.validate import seed_list

SFT_RECIPES = ("kl_sweep", "grokking")
"""Park's two SFT recipes (``sft_recipe``)."""


def sft_recipe(name: str, epochs: int, *, lr: float = 1e-3, batch_size: int = 16) -> TrainConfig:
    """One of Park's two SFT recipes (SFT_RECIPES), evaluated at ≤ 10 points along the way.

    'kl_sweep' (§3.3 for §4.2): Adam at `lr`, batch `batch_size`, no weight decay, no clipping.
    'grokking' (§3.3 for §4.1): AdamW at 1e-4, weight decay 0.01, batch 512, gradient clipping at 5
    (`lr` and `batch_size` do not apply)."""
    if name == "kl_sweep":
        return TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, epochs=epochs, batch_size=batch_size, grad_clip=None,
                           n_evals=min(10, epochs))  # fmt: skip
    if name == "grokking":
        return TrainConfig(optimizer="adamw", lr=1e-4, weight_decay=0.01, epochs=epochs, batch_size=512, grad_clip=5.0,
                           n_evals=min(10, epochs))  # fmt: skip
    raise ValueError(f"sft_recipe: name must be one of {SFT_RECIPES}, got {name!r}")


def sft_reference(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    seed: int,
    cache_dir: Path,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Transformer, pd.DataFrame]:
    """The SFT reference of one seed (fresh model, SFT on the train pairs), frozen, with its curve,
    on `device` (trained there; a CPU and a GPU reference are cached apart).

    Cached by seed and a hash of the data, model and SFT configs (SFT is evaluated by greedy
    answers alone, which no EvalConfig field changes): runs that differ only in their KL or
    pair settings share one reference. A killed SFT resumes from its last evaluation.
    """
    cfg = dataclasses.replace(sft_cfg, seed=seed)
    train, test = make_pairs(data_cfg)
    evaluator = Evaluator(test, data_cfg, eval_cfg)
    key = RunKey(Path(cache_dir), "sft", seed, (data_cfg, model_cfg, cfg))
    return cached_model(
        key,
        partial(build_model, model_cfg, seed, resolve_device(device)),
        lambda model, checkpoint: train_sft(model, train, cfg, evaluator, progress, checkpoint),
    )


def keep_indices(betas: list[float], keep_betas: Iterable[float]) -> list[int]:
    """Indices into betas of the β whose weights are to be kept; each must be one of betas."""
    indices = []
    for b in keep_betas:
        matches = [i for i, x in enumerate(betas) if math.isclose(x, b, rel_tol=1e-9)]
        if not matches:
            raise ValueError(f"keep_betas: {b!r} is not one of the trained betas {betas}")
        indices.append(matches[0])
    return sorted(set(indices))


def evaluate_with_deltas(evaluator: Evaluator, reference_params: dict, policies: Ensemble, betas: list[float]) -> list[dict]:
    """The Evaluator's rows for each model (at its run's β), with its WeightDelta from the
    reference (Park Eq. 7), in all and in attention."""
    rows = evaluator(policies, betas)
    deltas = group_weight_deltas(policies.params, reference_params)  # {group: (M,)}
    total = sum(deltas.values())
    for i, row in enumerate(rows):
        row.update(weight_delta=float(total[i]), attention_delta=float(deltas["attention"][i]))
    return rows


def validate_grid(
    dpo_cfg: DPOConfig, betas: float | Iterable[float], seeds: int | Iterable[int]
) -> tuple[list[DPOConfig], list[int]]:
    """One DPOConfig per β (each validated) and the list of seeds; raises before any work on a bad value."""
    betas = [betas] if isinstance(betas, (int, float)) else list(betas)
    if not betas:
        raise ValueError("betas must name at least one β > 0, got an empty list")
    dpo_cfgs = [dataclasses.replace(dpo_cfg, beta=b) for b in betas]
    return dpo_cfgs, seed_list(seeds)


def run_sft_then_dpo(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: DPOConfig,
    eval_cfg: EvalConfig,
    betas: float | Iterable[float],
    seeds: int | Iterable[int],
    cache_dir: str | Path,
    progress: bool | None = None,
    keep_betas: Iterable[float] = (),
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """For each seed: SFT from a fresh model, then DPO from that reference at every β (Park §3.3).

    The seed sets the model initialisation and the batch order of SFT and DPO; the
    train/test split is fixed by ``data_cfg.seed``. Every model trains and is evaluated on
    `device` ('cpu', 'cuda' or 'cuda:N'). All configurations are validated, every β and the
    device included, before any training starts.
    Returns one row per evaluation with columns phase ('sft' | 'dpo'), beta (NaN for
    SFT), seed, step, epoch, loss, the Evaluator's metrics, and the WeightDelta from the
    reference (Park Eq. 7) in all (`weight_delta`) and in the attention group
    (`attention_delta`), and TRL's DPO metrics under TRL's names (``metrics.trl_metrics``,
    on the held-out pairs). For every β in keep_betas the weights at each evaluation are
    saved, and `weights` holds the file's path (empty for other rows).
    """
    check_fits(model_cfg, data_cfg)
    device = resolve_device(device)
    dpo_cfgs, seeds = validate_grid(dpo_cfg, betas, seeds)
    kept = keep_indices([c.beta for c in dpo_cfgs], keep_betas)
    train, test = make_pairs(data_cfg)
    frames = []
    for seed in seeds:
        reference, sft = sft_reference(data_cfg, model_cfg, sft_cfg, eval_cfg, seed, Path(cache_dir), progress, device)
        frames.append(sft.assign(phase="sft", beta=float("nan"), seed=seed))
        members = [Member(dataclasses.replace(c, seed=seed)) for c in dpo_cfgs]
        key = RunKey(Path(cache_dir), "dpo", seed, (data_cfg, model_cfg, dataclasses.replace(sft_cfg, seed=seed), eval_cfg))
        evaluator = Evaluator(test, data_cfg, eval_cfg, reference=reference)
        evaluate = partial(evaluate_with_deltas, evaluator, dict(reference.named_parameters()))
        dpo = run_dpo(key, reference, train, members, evaluate, keep=kept, progress=progress)
        if not kept:
            dpo["weights"] = ""
        frames.append(dpo.drop(columns="member").assign(phase="dpo", seed=seed))
    columns = ["phase", "beta", "seed", "step", "epoch", "loss", "ood_rate", "seq_error", "accuracy", "margin"]
    columns += ["kl", "kl_se", "kl_mc", "kl_mc_se", "weight_delta", "attention_delta", *TRL_NAMES, "weights"]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)
