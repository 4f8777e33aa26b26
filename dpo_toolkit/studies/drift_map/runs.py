"""The drift map's runs: every recipe with every seed, trained as batched ensembles through the
runner (recipes that share a schedule form one ensemble, its seeds members of it), each evaluated along
training on what drift is made of: greedy OOD rate, the exact OOD probability mass, and the
log-probabilities of the training pairs' chosen and rejected answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig, TrainConfig, check_fits, require
from dpo_toolkit.core.data import PairSet, collate, collate_pairs, make_pairs
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import Evaluator, pair_logps, score
from dpo_toolkit.core.exact import response_masses
from dpo_toolkit.core.generate import decoded_answers, greedy_sequences
from dpo_toolkit.core.metrics import answers_tensor, is_ood
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.runner import RunKey, run_dpo
from dpo_toolkit.recipes.sft_then_dpo import replicate_members, sft_references

from .design import Recipe


@dataclass(frozen=True)
class MapSetup:
    """What every run of the map shares: the data, the model, the two SFT recipes a reference
    can come from, and what an evaluation computes."""

    data: DataConfig
    model: ModelConfig
    eval: EvalConfig
    kl_sweep_sft: TrainConfig
    """Park §4.2's SFT recipe (the reference of every grid cell)."""
    grokking_sft: TrainConfig
    """Park §4.1's SFT recipe (the reference arm)."""
    evals_per_epoch: int = 2
    """Evaluations per DPO epoch (after one at step 0, the reference)."""
    scored_train_pairs: int = 256
    """Training pairs (a fixed random subset) whose chosen and rejected log-probs are tracked."""
    epochs_per_eval: int = 1
    """With evals_per_epoch = 1, evaluate every this many epochs instead (the update axis's long runs)."""

    def __post_init__(self) -> None:
        check_fits(self.model, self.data)
        require(isinstance(self.evals_per_epoch, int) and self.evals_per_epoch >= 1, self, "evals_per_epoch", "an integer ≥ 1")
        require(isinstance(self.scored_train_pairs, int) and self.scored_train_pairs >= 1, self, "scored_train_pairs",
                "an integer ≥ 1")  # fmt: skip
        require(isinstance(self.epochs_per_eval, int) and self.epochs_per_eval >= 1
                and (self.epochs_per_eval == 1 or self.evals_per_epoch == 1), self, "epochs_per_eval",
                "an integer ≥ 1 (> 1 only with evals_per_epoch = 1)")  # fmt: skip

    def sft(self, reference: str) -> TrainConfig:
        return {"kl_sweep": self.kl_sweep_sft, "grokking": self.grokking_sft}[reference]


def training_subset(train: PairSet, size: int | None, seed: int) -> PairSet:
    """All training pairs (size None), or a random subset of `size` of them drawn with `seed`."""
    if size is None:
        return train
    if size > len(train):
        raise ValueError(f"train_size {size} exceeds the {len(train)} training pairs")
    keep = np.sort(np.random.default_rng(seed).choice(len(train), size, replace=False))
    return PairSet(train.prompt[keep], train.chosen[keep], train.rejected[keep])


class DriftEvaluator:
    """The Evaluator's metrics (greedy OOD rate, accuracy, margin, KL, …) of every member, plus:

    - ``ood_mass``: the exact probability mass on OOD answers (``exact.response_masses``), mean
      over the test prompts;
    - ``chosen_logp`` and ``rejected_logp``: mean log π(y_w | s) and log π(y_l | s) over a fixed
      subset of the training pairs; ``train_ood_rate`` the greedy OOD rate on their prompts;
    - ``window_lost``, ``window_gained`` and ``train_ood_mass`` (C24's mass decomposition, ``mass``):
      on those pairs' prompts, mean over prompts, the probability the in-window answers that fell
      since the reference lost between them, Σ_a (π_ref(a|s) − π(a|s))⁺, what those that rose gained,
      Σ_a (π(a|s) − π_ref(a|s))⁺ (a over the answers in [s − W, s + W], each one's own string 'a.',
      every one a y_w or y_l of some pair of s), and the exact OOD mass (``exact.response_masses``);
    - ``ordering``: among those pairs whose prompt gets an OOD greedy answer y_OOD, the share with
      π(y_OOD | s) > π(y_w | s) > π(y_l | s), Park's proposed mechanism of drift (NaN when no
      prompt gets an OOD greedy answer). The greedy answer is the
      OOD answer the policy actually gives; the total OOD mass would not do, since it is a sum
      over many answers and already exceeds a single π(y_w) at the reference.
    """

    def __init__(self, evaluator: Evaluator, train: PairSet, window: int, n_scored: int, seed: int):
        self.evaluator, self.window = evaluator, window
        keep = np.sort(np.random.default_rng(seed).choice(len(train), min(n_scored, len(train)), replace=False))
        scored = PairSet(train.prompt[keep], train.chosen[keep], train.rejected[keep])
        self.batch = collate_pairs(scored)
        self.train_prompts, self.pair_prompt = np.unique(
            scored.prompt, return_inverse=True
        )  # pair j asks train_prompts[pair_prompt[j]]
        owner, answer = zip(*[(i, a) for i, p in enumerate(self.train_prompts.tolist())
                              for a in range(max(p - window, 0), p + window + 1)], strict=True)  # fmt: skip
        self.window_owner = np.array(owner)  # (K,): the prompt (index into train_prompts) of each in-window answer
        self.window_batch = collate(self.train_prompts[self.window_owner], np.array(answer))  # (K, T): 's=a.'
        self.reference_window = np.exp(score(evaluator.reference, self.window_batch).double().cpu().numpy())  # (K,)

    @torch.no_grad()
    def __call__(self, policies: Ensemble, betas: list[float]) -> list[dict]:
        rows = self.evaluator(policies, betas)  # the β of each member's run
        _, test_log_ood = response_masses(policies, self.evaluator.prompts, self.window)  # (M, test prompts)
        _, train_log_ood = response_masses(policies, self.train_prompts, self.window)  # (M, train prompts)
        moved = np.exp(score(policies, self.window_batch).double().cpu().numpy()) - self.reference_window  # (M, K)
        lost, gained = (np.stack([np.bincount(self.window_owner, weights=w, minlength=len(self.train_prompts)) for w in x])
                        for x in (np.clip(-moved, 0, None), np.clip(moved, 0, None)))  # (M, train prompts) each  # fmt: skip
        chosen_logps, rejected_logps = (x.double().cpu().numpy() for x in pair_logps(policies, self.batch))  # (M, pairs) each
        greedy = greedy_sequences(policies, self.train_prompts)  # (M, train prompts, T)
        greedy_logps = score(policies, greedy).double().cpu().numpy()  # (M, train prompts)
        prompts = torch.as_tensor(self.train_prompts, dtype=torch.float64)
        greedy_ood = is_ood(answers_tensor(decoded_answers(greedy)), prompts, self.window).numpy()  # (M, train prompts)
        pair_ood, pair_greedy_logps = greedy_ood[:, self.pair_prompt], greedy_logps[:, self.pair_prompt]  # (M, pairs)
        chain = (pair_greedy_logps > chosen_logps) & (chosen_logps > rejected_logps)  # π(y_OOD) > π(y_w) > π(y_l)
        n_ood = pair_ood.sum(-1)  # (M,)
        ordering = np.where(n_ood > 0, (pair_ood & chain).sum(-1) / np.maximum(n_ood, 1), np.nan)  # (M,)
        for i, row in enumerate(rows):
            row.update(
                ood_mass=float(np.exp(test_log_ood[i]).mean()),
                train_ood_rate=float(greedy_ood[i].mean()),
                chosen_logp=float(chosen_logps[i].mean()),
                rejected_logp=float(rejected_logps[i].mean()),
                window_lost=float(lost[i].mean()),
                window_gained=float(gained[i].mean()),
                train_ood_mass=float(np.exp(train_log_ood[i]).mean()),
                ordering=float(ordering[i]),
            )
        return rows


def run_recipes(
    recipes: Sequence[Recipe],
    seeds: Sequence[int],
    setup: MapSetup,
    cache_dir: str | Path,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
    members: bool = True,
) -> pd.DataFrame:
    """Every recipe with every seed. Seed s sets the SFT reference (initialisation and SFT batch
    order), the DPO batch order and the training subset. Replicates are members: the recipes sharing
    a schedule train as one batched ensemble over every seed (each member with its own lr, β, weight
    decay, seed and reference), or one per seed when the schedule trains on a subset (``training_subset``
    draws each seed's own); the SFT references of every seed train as one ensemble too. With `members`
    False, every seed trains its own ensembles, keyed as a run of that seed alone (one process per seed
    fills a cache that a last call then reads: ``benchmarks.drift_updates``).

    Returns one row per recipe, seed and evaluation, seed by seed: the recipe's fields, its `label`, seed,
    step, epoch, loss and ``DriftEvaluator``'s metrics (step 0 is the reference). Cached under
    cache_dir; a killed run resumes.
    """
    device = resolve_device(device)
    groups = _schedule_groups(recipes)
    if not seeds:
        raise ValueError("run_recipes needs at least one recipe and one seed")
    seeds = list(seeds)
    train, test = make_pairs(setup.data)
    references = {name: [m for m, _ in sft_references(setup.data, setup.model, setup.sft(name), setup.eval, seeds,
                                                      Path(cache_dir), progress, device)]
                  for name in dict.fromkeys(schedule[-1] for schedule in groups)}  # fmt: skip
    frames: dict[tuple[int, str], pd.DataFrame] = {}
    for schedule, recipes_of in groups.items():
        train_size = schedule[3]
        for together in [seeds] if members and train_size is None else [[seed] for seed in seeds]:
            refs = [references[schedule[-1]][seeds.index(seed)] for seed in together]
            frames |= _train_group(schedule, recipes_of, refs, together, train, test, setup, cache_dir, progress)
    order = [(seed, recipe.label) for seed in seeds for recipes_of in groups.values() for recipe in recipes_of]
    curves = pd.concat([frames[k] for k in order], ignore_index=True)
    fields = [f.name for f in dataclasses.fields(Recipe)]
    return curves[[*fields, "label", "seed", *[c for c in curves.columns if c not in (*fields, "label", "seed")]]]


def _schedule_groups(recipes: Sequence[Recipe]) -> dict[tuple, list[Recipe]]:
    """The recipes by schedule, one per cell (the first recipe with its knobs); each group
    trains as one batched ensemble (``run_recipes``). Two different recipes with one label, or no
    recipe, are refused."""
    cells: dict[tuple, Recipe] = {}
    for recipe in recipes:
        cells.setdefault(recipe.knobs, recipe)  # one run per cell: the first recipe with its knobs
    unique = list(cells.values())
    if len({r.label for r in unique}) != len(unique):
        raise ValueError("run_recipes: two different recipes share a label")
    if not unique:
        raise ValueError("run_recipes needs at least one recipe and one seed")
    groups: dict[tuple, list[Recipe]] = {}
    for recipe in unique:
        groups.setdefault(recipe.schedule, []).append(recipe)
    return groups


def _train_group(
    schedule: tuple,
    recipes: list[Recipe],
    references: list[Transformer],
    seeds: list[int],
    train: PairSet,
    test: PairSet,
    setup: MapSetup,
    cache_dir: str | Path,
    progress: bool | None,
) -> dict[tuple[int, str], pd.DataFrame]:
    """The recipes of one schedule on `seeds` (references[j] is seeds[j]'s SFT reference), trained as one
    batched ensemble of every (seed, recipe), each member from its own seed's reference; the frame of
    evaluations of each (seed, recipe label), with the recipe's fields, label and seed."""
    optimizer, batch_size, epochs, train_size, ref_name = schedule
    pairs = training_subset(train, train_size, seeds[0])  # one seed, or all pairs (train_size None)
    n_evals = max(1, setup.evals_per_epoch * epochs // setup.epochs_per_eval)
    # member i is grid[i] = (seed, recipe index), against its seed's reference (References over several seeds)
    grid, dpo_members, reference = replicate_members(seeds, [r.dpo_config(n_evals, seeds[0]) for r in recipes], references)
    evaluator = Evaluator(test, setup.data, setup.eval, reference=reference)
    evaluate = DriftEvaluator(evaluator, pairs, setup.data.window, setup.scored_train_pairs, setup.eval.seed)
    sft_cfg = dataclasses.replace(setup.sft(ref_name), seed=seeds[0])
    variant = Recipe(optimizer, 1.0, 1.0, batch_size, epochs, 0.0, train_size, ref_name)
    together = () if len(seeds) == 1 else (torch.tensor(seeds),)  # one seed: the key of a run of that seed alone
    key = RunKey(Path(cache_dir), f"dpo-{optimizer}-b{batch_size}-e{epochs}-{ref_name}", seeds[0],
                 (setup, sft_cfg, variant, *together))  # fmt: skip
    df = run_dpo(key, reference, pairs, dpo_members, evaluate, progress=progress)
    frames = {}
    for i, (seed, k) in enumerate(grid):
        recipe = recipes[k]
        rows = df[df["member"] == i].drop(columns=["member", "beta"])
        fields = {**dataclasses.asdict(recipe), "train_size": len(pairs)}  # None (all pairs) as the number used
        frames[seed, recipe.label] = rows.assign(**fields, label=recipe.label, seed=seed).reset_index(drop=True)
    return frames
