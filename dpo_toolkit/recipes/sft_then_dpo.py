"""Park et al.'s recipe on the number line (§3.3), through the runner: for each seed one SFT
reference, then DPO at every β. Replicates are members: the SFT references of all seeds train as
one batched ensemble, and DPO at every (seed, β) as another, each member against its own seed's
reference with its own seed's batch order. Four chapters and the CHES mitigation runs start from it.

Everything is cached under ``cache_dir`` (see ``runner``): each seed's SFT model and curve, and
the DPO curves; a run killed at any point resumes and ends with an unbroken run's numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig, check_fits
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.ensemble import Ensemble, References
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.metrics import TRL_NAMES, group_weight_deltas
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.runner import Member, RunKey, run_dpo
from dpo_toolkit.core.storage import save_torch, write_csv
from dpo_toolkit.core.train import Checkpoint, train_sft_ensemble
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
    """The SFT reference of one seed and its curve: ``sft_references`` of that seed alone."""
    return sft_references(data_cfg, model_cfg, sft_cfg, eval_cfg, [seed], cache_dir, progress, device)[0]


def sft_references(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    seeds: Sequence[int],
    cache_dir: Path,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> list[tuple[Transformer, pd.DataFrame]]:
    """The SFT reference of each seed (fresh model of that seed, SFT on the train pairs with that
    seed's batch order), frozen, with its curve, on `device` (a CPU and a GPU reference are cached apart).

    Each reference is cached by its seed and a hash of the data, model and SFT configs (SFT is
    evaluated by greedy answers alone, which no EvalConfig field changes), so runs that differ
    only in their KL or pair settings share it. The seeds not cached yet train together as the
    members of one batched ensemble (replicates as members, ``train_sft_ensemble``), checkpointed
    after every evaluation: a killed SFT resumes from its last evaluation. While they train, the
    seeds' runs are locked (in seed order), so another process asking for one of them waits.
    """
    device = resolve_device(device)
    seeds = seed_list(seeds)
    train, test = make_pairs(data_cfg)
    cfgs = {seed: dataclasses.replace(sft_cfg, seed=seed) for seed in seeds}
    keys = {seed: RunKey(Path(cache_dir), "sft", seed, (data_cfg, model_cfg, cfgs[seed]), device.type) for seed in seeds}
    with contextlib.ExitStack() as locks:
        for seed in sorted(keys):
            locks.enter_context(keys[seed].lock())
        missing = [seed for seed in keys if not keys[seed].path(".pt").exists()]
        if missing:
            _train_references(missing, keys, cfgs, train, Evaluator(test, data_cfg, eval_cfg), model_cfg, device, progress)
        references = []
        for seed in seeds:
            model = build_model(model_cfg, seed, device)
            model.load_state_dict(torch.load(keys[seed].path(".pt"), map_location=device))
            references.append((model.eval().requires_grad_(False), pd.read_csv(keys[seed].path(".csv"))))
    return references


def _train_references(seeds, keys, cfgs, train, evaluator, model_cfg, device, progress) -> None:
    """SFT of `seeds` as one ensemble, resumable (a checkpoint keyed by the first seed's run and the
    seeds); each member's weights and curve are then written to its seed's run (``keys``)."""
    group = RunKey(keys[seeds[0]].directory, "sft-replicates", seeds[0], (*keys[seeds[0]].depends_on, torch.tensor(seeds)),
                   device.type)  # fmt: skip
    checkpoint = Checkpoint(group.path(".ckpt"))
    policies = Ensemble([build_model(model_cfg, seed, device) for seed in seeds])
    curve = train_sft_ensemble(policies, train, [cfgs[s] for s in seeds], evaluator, progress, checkpoint)
    for i, seed in enumerate(seeds):
        write_csv(curve[curve["member"] == i].drop(columns="member").reset_index(drop=True), keys[seed].path(".csv"))
        save_torch(policies.member(i).state_dict(), keys[seed].path(".pt"))
    checkpoint.remove()


def keep_indices(betas: list[float], keep_betas: Iterable[float]) -> list[int]:
    """Indices into betas of the β whose weights are to be kept; each must be one of betas."""
    indices = []
    for b in keep_betas:
        matches = [i for i, x in enumerate(betas) if math.isclose(x, b, rel_tol=1e-9)]
        if not matches:
            raise ValueError(f"keep_betas: {b!r} is not one of the trained betas {betas}")
        indices.append(matches[0])
    return sorted(set(indices))


def evaluate_with_deltas(
    evaluator: Evaluator, reference: Transformer | References, policies: Ensemble, betas: list[float]
) -> list[dict]:
    """The Evaluator's rows for each model (at its run's β), with its WeightDelta from its
    reference (Park Eq. 7; one reference, or References, one per model), in all and in attention."""
    rows = evaluator(policies, betas)
    stacked = isinstance(reference, Ensemble | References)
    reference_params = reference.params if stacked else dict(reference.named_parameters())
    deltas = group_weight_deltas(policies.params, reference_params, stacked_b=stacked)  # {group: (M,)}
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


def replicate_members(
    seeds: list[int], dpo_cfgs: list[DPOConfig], references: list[Transformer]
) -> tuple[list[tuple[int, int]], list[Member], Transformer | References]:
    """Replicates as members: member i is grid[i] = (seed, index into dpo_cfgs), with that config at
    that seed (its batch order), against its seed's reference (references[j] is seeds[j]'s). Returns
    the grid, the members and the reference: the one model for one seed, else ``References`` (one per
    member, each seed's stored and run once)."""
    grid = [(seed, k) for seed in seeds for k in range(len(dpo_cfgs))]
    members = [Member(dataclasses.replace(dpo_cfgs[k], seed=seed)) for seed, k in grid]
    reference = references[0] if len(seeds) == 1 else References(references, [seeds.index(seed) for seed, _ in grid])
    return grid, members, reference


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
    """For each seed: SFT from a fresh model, then DPO from that reference at every β (Park §3.3),
    every (seed, β) a member of one batched DPO ensemble (``sft_references`` trains the references).

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
    references = sft_references(data_cfg, model_cfg, sft_cfg, eval_cfg, seeds, Path(cache_dir), progress, device)
    grid, members, reference = replicate_members(seeds, dpo_cfgs, [model for model, _ in references])
    sft_cfgs = [dataclasses.replace(sft_cfg, seed=seed) for seed in seeds]
    key = RunKey(Path(cache_dir), "dpo", seeds[0], (data_cfg, model_cfg, *sft_cfgs, eval_cfg))
    evaluate = partial(evaluate_with_deltas, Evaluator(test, data_cfg, eval_cfg, reference=reference), reference)
    keep = [i for i, (_, k) in enumerate(grid) if k in kept]
    dpo = run_dpo(key, reference, train, members, evaluate, keep=keep, progress=progress)
    if not keep:
        dpo["weights"] = ""
    dpo = dpo.assign(phase="dpo", seed=dpo["member"].map(lambda i: grid[i][0])).drop(columns="member")
    frames = []
    for seed, (_, sft) in zip(seeds, references, strict=True):  # each seed's SFT rows, then its DPO rows
        frames += [sft.assign(phase="sft", beta=float("nan"), seed=seed), dpo[dpo["seed"] == seed]]
    columns = ["phase", "beta", "seed", "step", "epoch", "loss", "ood_rate", "seq_error", "accuracy", "margin"]
    columns += ["kl", "kl_se", "kl_mc", "kl_mc_se", "weight_delta", "attention_delta", *TRL_NAMES, "weights"]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)
