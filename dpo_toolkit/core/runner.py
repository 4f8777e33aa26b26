"""SFT-then-DPO runs over seeds and β: for each seed one SFT reference, then DPO at
every β as one batched ensemble (``train_dpo_ensemble``).

Everything is cached under ``cache_dir``, named by seed and a hash of every
configuration it depends on: the SFT model and curve, and each seed's DPO curves. An
unfinished DPO run leaves a checkpoint after every evaluation, so a run killed at any
point resumes from it and ends with the numbers an unbroken run gives.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from .config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig, check_fits, config_hash
from .data import make_pairs
from .ensemble import Ensemble
from .evaluate import Evaluator
from .metrics import group_weight_deltas
from .model import Transformer, build_model
from .storage import write_csv
from .train import train_dpo_ensemble, train_sft


def sft_reference(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    seed: int,
    cache_dir: Path,
    progress: bool | None = None,
) -> tuple[Transformer, pd.DataFrame]:
    """The SFT reference of one seed (fresh model, SFT on the train pairs), frozen, with its curve.

    Cached under cache_dir by seed and a hash of the data, model and SFT configs (SFT is
    evaluated by greedy answers alone, which no EvalConfig field changes): a second call
    loads it, and runs that differ only in their KL or pair settings share one reference.
    SFT leaves a checkpoint after every evaluation, so a killed run resumes where it stopped.
    """
    cfg = dataclasses.replace(sft_cfg, seed=seed)
    key = config_hash(data_cfg, model_cfg, cfg)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    weights, curve = cache_dir / f"sft-seed{seed}-{key}.pt", cache_dir / f"sft-seed{seed}-{key}.csv"
    reference = build_model(model_cfg, seed)
    if weights.exists() and curve.exists():
        reference.load_state_dict(torch.load(weights))
        df = pd.read_csv(curve)
    else:
        train, test = make_pairs(data_cfg)
        checkpoint = weights.with_suffix(".ckpt")
        df = train_sft(reference, train, cfg, Evaluator(test, data_cfg, eval_cfg), progress, checkpoint)
        torch.save(reference.state_dict(), weights)
        write_csv(df, curve)
        checkpoint.unlink()
    return reference.eval().requires_grad_(False), df


def _keep_indices(betas: list[float], keep_betas: Iterable[float]) -> list[int]:
    """Indices into betas of the β whose weights are to be kept; each must be one of betas."""
    indices = []
    for b in keep_betas:
        matches = [i for i, x in enumerate(betas) if math.isclose(x, b, rel_tol=1e-9)]
        if not matches:
            raise ValueError(f"keep_betas: {b!r} is not one of the trained betas {betas}")
        indices.append(matches[0])
    return sorted(set(indices))


def weights_path(cache_dir: Path, seed: int, key: str, beta: float, step: int) -> Path:
    """Where run_sft_then_dpo keeps the state dict of the model at β after `step` DPO steps."""
    return cache_dir / f"dpo-seed{seed}-{key}-weights" / f"beta{beta:g}-step{step}.pt"


def _evaluate_with_deltas(evaluator: Evaluator, reference_params: dict, betas: list[float], policies: Ensemble) -> list[dict]:
    """The Evaluator's rows for each model, with its WeightDelta from the reference, in all and in attention."""
    rows = evaluator(policies, beta=betas)
    deltas = group_weight_deltas(policies.params, reference_params)  # {group: (M,)}
    total = sum(deltas.values())
    for i, row in enumerate(rows):
        row.update(weight_delta=float(total[i]), attention_delta=float(deltas["attention"][i]))
    return rows


def _save_members(policies: Ensemble, path_of: dict[int, Callable[[int], Path]], step: int) -> None:
    """Save model i of the ensemble to path_of[i](step), for every i in path_of."""
    for i, path in path_of.items():
        path(step).parent.mkdir(exist_ok=True)
        torch.save(policies.member(i).state_dict(), path(step))


def validate_grid(
    dpo_cfg: DPOConfig, betas: float | Iterable[float], seeds: int | Iterable[int]
) -> tuple[list[DPOConfig], list[int]]:
    """One DPOConfig per β (each validated) and the list of seeds; raises before any work on a bad value."""
    betas = [betas] if isinstance(betas, (int, float)) else list(betas)
    if not betas:
        raise ValueError("betas must name at least one β > 0, got an empty list")
    dpo_cfgs = [dataclasses.replace(dpo_cfg, beta=b) for b in betas]
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers ≥ 0, got {seeds!r}")
    return dpo_cfgs, seeds


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
) -> pd.DataFrame:
    """For each seed: SFT from a fresh model, then DPO from that reference at every β (Park §3.3).

    The seed sets the model initialisation and the batch order of SFT and DPO; the
    train/test split is fixed by ``data_cfg.seed``. All configurations are validated,
    every β included, before any training starts.
    Returns one row per evaluation with columns phase ('sft' | 'dpo'), beta (NaN for
    SFT), seed, step, epoch, loss, the Evaluator's metrics, and the WeightDelta from the
    reference (Park Eq. 7) in all (`weight_delta`) and in the attention group
    (`attention_delta`). For every β in keep_betas the weights at each evaluation are
    saved, and `weights` holds the file's path (empty for other rows).
    """
    check_fits(model_cfg, data_cfg)
    dpo_cfgs, seeds = validate_grid(dpo_cfg, betas, seeds)
    kept = _keep_indices([c.beta for c in dpo_cfgs], keep_betas)
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = make_pairs(data_cfg)
    frames = []
    for seed in seeds:
        reference, sft = sft_reference(data_cfg, model_cfg, sft_cfg, eval_cfg, seed, out, progress)
        frames.append(sft.assign(phase="sft", beta=float("nan"), seed=seed))
        cfgs = [dataclasses.replace(c, seed=seed) for c in dpo_cfgs]
        key = config_hash(data_cfg, model_cfg, dataclasses.replace(sft_cfg, seed=seed), eval_cfg, *cfgs)
        curve = out / f"dpo-seed{seed}-{key}.csv"
        kept_betas = [cfgs[i].beta for i in kept]
        dpo = pd.read_csv(curve) if curve.exists() else None
        if dpo is None or not all(weights_path(out, seed, key, b, t).exists() for b in kept_betas for t in dpo["step"]):
            policies = Ensemble([copy.deepcopy(reference) for _ in cfgs])
            evaluator = Evaluator(test, data_cfg, eval_cfg, reference=reference)
            evaluate = partial(_evaluate_with_deltas, evaluator, dict(reference.named_parameters()), [c.beta for c in cfgs])
            paths = partial(weights_path, out, seed, key)
            keep = partial(_save_members, policies, {i: partial(paths, cfgs[i].beta) for i in kept})
            checkpoint = out / f"dpo-seed{seed}-{key}.ckpt"
            dpo = train_dpo_ensemble(policies, reference, train, cfgs, evaluate, progress, checkpoint, keep)
            write_csv(dpo, curve)
            checkpoint.unlink()
        weights = {(b, t): str(weights_path(out, seed, key, b, t)) for b in kept_betas for t in dpo["step"]}
        dpo["weights"] = [weights.get((b, t), "") for b, t in zip(dpo["beta"], dpo["step"], strict=True)]
        frames.append(dpo.drop(columns="member").assign(phase="dpo", seed=seed))
    columns = ["phase", "beta", "seed", "step", "epoch", "loss", "ood_rate", "seq_error", "accuracy", "margin"]
    columns += ["kl", "kl_se", "kl_mc", "kl_mc_se", "weight_delta", "attention_delta", "weights"]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)
