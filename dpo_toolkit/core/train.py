"""The one training loop (``optimize``, Park §3.3) and SFT on it; DPO on it is ``dpo_train``.

The optimizers (AdamW, Adam, RMSprop) act elementwise, so one optimizer over stacked weights
is M independent optimizers; gradient clipping is done per model. One model and a batched
ensemble share the loop, and tests check that they agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from .config import TrainConfig
from .data import Batch, PairSet, collate
from .ensemble import Ensemble, model_device
from .losses import sequence_logps, sft_loss
from .model import Transformer
from .optim import ensemble_optimizer, make_optimizer
from .progress import progress_bar
from .storage import save_torch

EvalFn = Callable[[], dict[str, float] | list[dict[str, float]]]


def eval_steps(total_steps: int, n_evals: int) -> list[int]:
    """Step 0 plus n_evals steps spread evenly up to total_steps (duplicates dropped)."""
    return sorted({0} | {math.ceil(total_steps * k / n_evals) for k in range(1, n_evals + 1)})


def clip_per_model(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale each model's gradient (slice i of every stacked parameter) to global norm ≤ max_norm."""
    norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in params]).sum(0).sqrt()  # (M,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s convention
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.ndim - 1))))


class Checkpoint:
    """A run's progress on disk: weights, optimizer state, the rows evaluated so far and the
    step, written atomically (temporary file, then rename) after every evaluation."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, params: list[torch.Tensor], optimizer, rows: list[dict], step: int) -> None:
        state = {"params": [p.detach() for p in params], "optimizer": optimizer.state_dict(), "rows": rows, "step": step}
        save_torch(state, self.path)

    def restore(self, params: list[torch.Tensor], optimizer) -> tuple[list[dict], int]:
        """Load the saved weights into params and the optimizer; returns (rows, step)."""
        state = torch.load(self.path, map_location=params[0].device)
        with torch.no_grad():
            for p, saved in zip(params, state["params"], strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        return state["rows"], state["step"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def optimize(
    params: list[torch.Tensor],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    members: Sequence[TrainConfig],
    evaluate: EvalFn,
    *,
    stacked: bool = False,
    checkpoint: Checkpoint | None = None,
    on_eval: Callable[[int], object] | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> pd.DataFrame:
    """The project's one trainer: minibatch training over a shuffled index of n_items,
    evaluating at eval_steps. Every chapter's SFT, DPO and RFT runs go through it.

    members[0] sets the schedule (optimizer, epochs, batch size, evaluations, clipping), which
    all members share, and the seed of the batch order; when the members' seeds differ, each
    member draws its own order from its own seed and batch_loss gets indices of shape (M, batch)
    instead of (batch,). With `stacked` (params are an
    ensemble's stacked weights, leading dimension the member), member i takes members[i]'s
    learning rate and weight decay (``optim.ensemble_optimizer``) and gradients are clipped
    per member; otherwise params are one model's, and len(members) must be 1.

    batch_loss returns the loss of each model, (M,); their sum is minimised, which
    trains each model on its own loss. Returns one row per evaluation and model, with
    `member` the model's index and `loss` its mean training loss since the last evaluation.

    With a `checkpoint`, progress is saved after every evaluation and a run that finds one
    resumes from it. Batch order is regenerated from the seed, so a resumed run gives the
    same numbers as an unbroken one. ``on_eval(step)`` runs after each evaluation, before
    the checkpoint is written.
    """
    cfg = members[0]
    if not stacked and len(members) != 1:
        raise ValueError(f"optimize: unstacked params are one model, so one config; got {len(members)}")
    optimizer = ensemble_optimizer(params, members) if stacked else make_optimizer(params, cfg)
    clip = clip_per_model if stacked else torch.nn.utils.clip_grad_norm_
    # one batch order for all members, or one per member when their seeds differ (replicates as members)
    per_member = len({c.seed for c in members}) > 1
    generators = [torch.Generator().manual_seed(c.seed) for c in (members if per_member else members[:1])]
    steps_per_epoch = math.ceil(n_items / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    at = eval_steps(total, cfg.n_evals)
    rows, losses, step = [], [], 0
    resumed = checkpoint is not None and checkpoint.exists()
    if resumed:
        rows, step = checkpoint.restore(params, optimizer)
    start = step

    def record() -> None:
        metrics = evaluate()
        metrics = [metrics] if isinstance(metrics, dict) else metrics
        mean_loss = torch.stack(losses).mean(0).tolist() if losses else [math.nan] * len(metrics)
        for member, (m, loss) in enumerate(zip(metrics, mean_loss, strict=True)):
            rows.append({"member": member, "step": step, "epoch": step / steps_per_epoch, "loss": loss, **m})
        losses.clear()
        if on_eval is not None:
            on_eval(step)
        if checkpoint is not None:
            checkpoint.save(params, optimizer, rows, step)

    if not resumed:  # a checkpoint holds every evaluation up to its step, step 0 included
        record()
    with progress_bar(total, start, desc, progress) as bar:
        for epoch in range(cfg.epochs):
            orders = torch.stack([torch.randperm(n_items, generator=g) for g in generators])  # (1 or M, n_items)
            for position, index in enumerate(orders.split(cfg.batch_size, dim=1)):  # drawn every epoch: resuming replays it
                if epoch * steps_per_epoch + position < start:
                    continue
                loss = batch_loss(index if per_member else index[0])  # (M,)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                if cfg.grad_clip is not None:
                    clip(params, cfg.grad_clip)
                optimizer.step()
                losses.append(loss.detach())
                step += 1
                bar.update()
                if step in at:
                    record()
    return pd.DataFrame(rows)


def fit_full_batch(
    model: torch.nn.Module | Ensemble,
    loss_of: Callable[[torch.nn.Module | Ensemble], torch.Tensor],
    cfg: TrainConfig,
    groups: list[dict] | None = None,
) -> None:
    """cfg.epochs full-batch steps of cfg's optimizer on the scalar loss_of(model), in place
    (no clipping, no evaluation): the loop of the tiny tasks whose data is one batch. `groups`:
    torch parameter groups (each may set its own "lr"), instead of every parameter at cfg.lr;
    an Ensemble needs them (its stacked weights are ``params``)."""
    optimizer = make_optimizer(model.parameters() if groups is None else groups, cfg)
    for _ in range(cfg.epochs):
        loss = loss_of(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_sft(
    model: Transformer,
    train: PairSet | Batch,
    cfg: TrainConfig,
    evaluate: Callable[[Transformer], dict],
    progress: bool | None = None,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """SFT (Park Eq. 4), in place: on (s, y_w) of every training pair, or on the sequences
    of a Batch (its response_mask marks the tokens scored). Returns one row per evaluation.
    With `checkpoint`, a killed run resumes from its last evaluation (see ``optimize``)."""
    batch = train if isinstance(train, Batch) else collate(train.prompt, train.chosen)
    device = next(model.parameters()).device  # the data follow the model
    batch = Batch(batch.tokens.to(device), batch.response_mask.to(device))

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        b = batch.select(index)
        return sft_loss(sequence_logps(model(b.tokens), b.tokens, b.response_mask))[None]

    params = list(model.parameters())
    evaluation = partial(evaluate, model)
    df = optimize(
        params, batch_loss, batch.tokens.shape[0], [cfg], evaluation, checkpoint=checkpoint, progress=progress, desc="SFT"
    )
    return df.drop(columns="member")


def train_sft_ensemble(
    policies: Ensemble,
    train: PairSet | Batch,
    cfgs: Sequence[TrainConfig],
    evaluate: Callable[[Ensemble], list[dict]],
    progress: bool | None = None,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """SFT (Park Eq. 4) of every model of `policies` as one batched run, in place: replicates as
    members. cfgs[i] configures model i; they may differ in lr, weight_decay and seed only (each
    seed its own batch order; the initialisation is the Ensemble's, one model per seed). Returns
    one row per evaluation and model, with `member` the model's index."""
    if len(cfgs) != len(policies) or len({dataclasses.replace(c, lr=1.0, weight_decay=0.0, seed=0) for c in cfgs}) != 1:
        raise ValueError("train_sft_ensemble needs one TrainConfig per model, differing in lr, weight_decay and seed only")
    batch = train if isinstance(train, Batch) else collate(train.prompt, train.chosen)
    device = model_device(policies)  # the data follow the models
    batch = Batch(batch.tokens.to(device), batch.response_mask.to(device))

    def batch_loss(index: torch.Tensor) -> torch.Tensor:  # index (batch,) or (M, batch)
        b = batch.select(index)
        return sft_loss(sequence_logps(policies(b.tokens), b.tokens, b.response_mask))  # (M,)

    params = list(policies.params.values())
    evaluation = partial(evaluate, policies)
    n_items = batch.tokens.shape[0]
    return optimize(params, batch_loss, n_items, cfgs, evaluation, stacked=True, checkpoint=checkpoint, progress=progress,
                    desc=f"SFT ×{len(cfgs)}")  # fmt: skip
