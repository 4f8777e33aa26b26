"""The experiment runner: every chapter's training runs go through it.

A run's files live under one cache directory, named ``<name>-seed<seed>-<hash>`` where the
hash covers everything the result depends on (``RunKey``). ``cached_model`` trains a model
once (SFT, pretraining) and loads it afterwards; ``cached_frames`` does the same for a run whose
result is a set of tables; ``run_dpo`` trains the members of a batched DPO ensemble, each with
its own β, learning rate, weight decay, SFT weight and pair weights.
All checkpoint after every evaluation, resume after a kill with the numbers an unbroken run
gives, and write their CSVs atomically, so an interrupted run never looks finished. Chapters
share one cache directory (``claims.run_cache``), so both hold a lock on the run while they
train it: a process that asks for a run another process is training waits, then loads it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from .config import DPOConfig, config_hash
from .data import Batch, PairSet
from .dpo_train import train_dpo_ensemble
from .ensemble import Ensemble, References, model_device
from .storage import save_torch, write_csv
from .train import Checkpoint
from .validate import SEED

RESULTS_VERSION = 5
"""Part of every run key: bump it when what a run writes changes (new columns, another
evaluation), so that results cached by an older toolkit are not read as current ones.
2: the curves carry TRL's DPO metrics. 3: decoding and exact masses use the attention cache
(equal up to float rounding, so a stored output made with either is reproduced from scratch).
4: decoding in larger chunks; the reference scores each distinct KL sample once (float rounding again).
5: replicates as members: SFT references train as members of one ensemble (float rounding again)."""


ARRAYS = (torch.Tensor, np.ndarray)  # hashed by their bytes in a RunKey; every other part is a dataclass


def array_hash(values: torch.Tensor | np.ndarray) -> str:
    """A short stable hash of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values)
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()[:12]


@dataclass(frozen=True)
class RunKey:
    """Where one run's files live: ``<directory>/<name>-seed<seed>-<config_hash(*depends_on)>.*``.

    depends_on: the frozen dataclasses the result depends on (data, model, training and
    evaluation configs, variants); arrays in it are hashed by their bytes. device: the kind of
    device the run computes on ('cpu' or 'cuda'), part of the hash for every device but the CPU,
    so that a GPU run (whose float rounding differs) never reads a CPU run's files or the reverse;
    ``cached_model`` and ``run_dpo`` set it from the model they train."""

    directory: Path
    name: str
    seed: int
    depends_on: tuple = ()
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not SEED.accepts(self.seed):
            raise ValueError(f"seeds must be integers ≥ 0, got {self.seed!r}")
        odd = [type(x).__name__ for x in self.depends_on if not isinstance(x, ARRAYS) and not dataclasses.is_dataclass(x)]
        if odd:
            raise TypeError(f"RunKey.depends_on holds dataclass instances and arrays only, got {', '.join(odd)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"RunKey.device must be 'cpu' or 'cuda' (a device type), got {self.device!r}")

    @property
    def stem(self) -> Path:
        arrays = [array_hash(x) for x in self.depends_on if isinstance(x, ARRAYS)]
        key = config_hash(*(x for x in self.depends_on if not isinstance(x, ARRAYS)))
        on = "" if self.device == "cpu" else f"-{self.device}"
        key = hashlib.sha256(f"v{RESULTS_VERSION}{on}-{key}".encode()).hexdigest()[:12]
        if arrays:
            key = hashlib.sha256("".join([key, *arrays]).encode()).hexdigest()[:12]
        return Path(self.directory) / f"{self.name}-seed{self.seed}-{key}"

    def path(self, suffix: str) -> Path:
        """The run's file with this suffix ('.csv', '.pt', '.ckpt', '-weights', …); creates the directory."""
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        return self.stem.with_name(self.stem.name + suffix)

    def lock(self) -> FileLock:
        """An exclusive lock on this run across processes (a '.lock' file beside its files), held while
        it is trained or loaded, so that two chapters sharing a cache never train it twice at once."""
        return FileLock(self.path(".lock"))


def cached_model(
    key: RunKey,
    build: Callable[[], torch.nn.Module],
    fit: Callable[[torch.nn.Module, Checkpoint], pd.DataFrame | None],
) -> tuple[torch.nn.Module, pd.DataFrame | None]:
    """The model build() returns, trained by fit(model, checkpoint) the first time and loaded
    from ``key.path('.pt')`` afterwards; frozen. fit's curve (or None) is cached beside it
    as CSV. fit may leave progress in the checkpoint; it is removed once the weights are saved."""
    model = build()
    key = dataclasses.replace(key, device=next(model.parameters()).device.type)
    weights, curve = key.path(".pt"), key.path(".csv")
    with key.lock():
        if weights.exists():
            model.load_state_dict(torch.load(weights, map_location=next(model.parameters()).device))
            df = pd.read_csv(curve) if curve.exists() else None
            Checkpoint(key.path(".ckpt")).remove()  # left by a run killed after saving its weights
        else:
            checkpoint = Checkpoint(key.path(".ckpt"))
            df = fit(model, checkpoint)
            if df is not None:
                write_csv(df, curve)
            save_torch(model.state_dict(), weights)
            checkpoint.remove()
    return model.eval().requires_grad_(False), df


def cached_frames(
    key: RunKey,
    suffixes: Sequence[str],
    compute: Callable[[Checkpoint], Sequence[pd.DataFrame]],
    scratch: Sequence[str] = (),
) -> list[pd.DataFrame]:
    """The tables of one run, stored at ``key.path(suffix)`` for each suffix: computed by
    compute(checkpoint) the first time (one frame per suffix, in order), loaded afterwards.

    Holds the run's lock throughout. The frames are written atomically (``storage.write_csv``);
    only then are the checkpoint (``key.path('.ckpt')``) and the `scratch` files (suffixes of files
    compute leaves to resume from) removed, so a killed run resumes and never looks finished.
    Returns the frames as stored (read back from their CSVs): a first call and a later one
    return the same frames."""
    paths = [key.path(suffix) for suffix in suffixes]
    with key.lock():
        if not all(path.exists() for path in paths):
            checkpoint = Checkpoint(key.path(".ckpt"))
            for df, path in zip(compute(checkpoint), paths, strict=True):
                write_csv(df, path)
            checkpoint.remove()
            for suffix in scratch:
                key.path(suffix).unlink(missing_ok=True)
        return [pd.read_csv(path) for path in paths]


@dataclass(frozen=True)
class Member:
    """One model of a batched DPO ensemble: its DPOConfig (β, learning rate and weight decay
    may differ between members; the schedule is shared) and the weight of an SFT term
    (−log π(y+)) added to its loss."""

    cfg: DPOConfig
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.cfg, DPOConfig):
            raise TypeError(f"Member.cfg must be a DPOConfig, got {type(self.cfg).__name__}")
        if not (isinstance(self.sft_weight, int | float) and math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"Member.sft_weight must be a finite number ≥ 0, got {self.sft_weight!r}")


def starting_points(reference: torch.nn.Module | Ensemble, n_members: int) -> list[torch.nn.Module]:
    """Each member's starting weights: a copy of the one reference, or of its own reference when
    `reference` is an Ensemble of one frozen reference per member (replicates as members)."""
    if isinstance(reference, Ensemble | References):
        if len(reference) != n_members:
            raise ValueError(f"run_dpo: {len(reference)} references for {n_members} members (one, or one per member)")
        return [reference.member(i) for i in range(n_members)]
    return [copy.deepcopy(reference) for _ in range(n_members)]


def run_dpo(
    key: RunKey,
    reference: torch.nn.Module | Ensemble,
    train: PairSet | Batch,
    members: Sequence[Member],
    evaluate: Callable[..., list[dict]],
    pair_weights: torch.Tensor | None = None,
    keep: Sequence[int] = (),
    progress: bool | None = None,
) -> pd.DataFrame:
    """DPO of every member from a copy of `reference` (or of its own, when `reference` is an Ensemble
    of one reference per member), as one batched ensemble (one batch order per seed), evaluated by
    evaluate(policies, betas=[each member's β]) at every evaluation (see ``train.optimize``).

    pair_weights (members, pairs): member i weights pair j by pair_weights[i, j] (a 0/1 mask
    trains on a subset with the same number of steps). For every member index in `keep`,
    its weights at each evaluation are saved and the `weights` column holds the file
    (empty for other rows). The curve is cached at ``key`` extended by the members and pair
    weights: a second call loads it; a killed run resumes from its last evaluation.
    Returns one row per evaluation and member: `member`, `beta`, step, epoch, loss, evaluate's metrics."""
    if not members:
        raise ValueError("run_dpo needs at least one Member")
    extra = (*members, *(() if pair_weights is None else (torch.as_tensor(pair_weights),)))
    key = dataclasses.replace(key, depends_on=(*key.depends_on, *extra), device=model_device(reference).type)
    curve, weights_dir = key.path(".csv"), key.path("-weights")

    def weights_path(member: int, step: int) -> Path:
        return weights_dir / f"member{member}-step{step}.pt"

    # a checkpoint of a run that kept other members' weights cannot give these members' earlier weights
    checkpoint = Checkpoint(key.path(f"-keep{'-'.join(map(str, keep))}.ckpt" if keep else ".ckpt"))
    with key.lock():
        df = pd.read_csv(curve) if curve.exists() else None
        if df is None or not all(weights_path(i, t).exists() for i in keep for t in df["step"].unique()):
            policies = Ensemble(starting_points(reference, len(members)))

            def save_kept(step: int) -> None:
                weights_dir.mkdir(exist_ok=True)
                for i in keep:
                    torch.save(policies.member(i).state_dict(), weights_path(i, step))

            sft_weights = [m.sft_weight for m in members] if any(m.sft_weight for m in members) else None
            df = train_dpo_ensemble(policies, reference, train, [m.cfg for m in members], evaluate, progress, checkpoint,
                                    save_kept if keep else None, pair_weights=pair_weights, sft_weights=sft_weights)  # fmt: skip
            write_csv(df, curve)
        checkpoint.remove()  # also one left by a run killed after writing its curve
    if keep:
        df["weights"] = [str(weights_path(i, t)) if i in keep else "" for i, t in zip(df["member"], df["step"], strict=True)]
    return df
