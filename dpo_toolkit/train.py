"""SFT and DPO training loops (Park §3.3) that return tidy DataFrames of metrics."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .config import DPOConfig, TrainConfig
from .data import PairSet, collate, collate_pairs
from .evaluate import pair_logps
from .losses import dpo_loss, sequence_logps, sft_loss
from .model import Transformer

EvalFn = Callable[[Transformer], dict[str, float]]


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer cfg names, with torch's defaults apart from lr and weight_decay."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg.optimizer]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def eval_steps(total_steps: int, n_evals: int) -> list[int]:
    """Step 0 plus n_evals steps spread evenly up to total_steps (duplicates dropped)."""
    return sorted({0} | {math.ceil(total_steps * k / n_evals) for k in range(1, n_evals + 1)})


def _optimize(
    model: Transformer,
    n_items: int,
    cfg: TrainConfig,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    evaluate: EvalFn,
    desc: str,
    progress: bool | None,
) -> pd.DataFrame:
    """Minibatch training over a shuffled index, evaluating at eval_steps; one row per evaluation."""
    optimizer = make_optimizer(model.parameters(), cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(n_items / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    at = eval_steps(total, cfg.n_evals)
    rows, losses, step = [], [], 0

    def record() -> None:
        model.eval()
        rows.append(
            {"step": step, "epoch": step / steps_per_epoch, "loss": np.mean(losses) if losses else np.nan, **evaluate(model)}
        )
        model.train()
        losses.clear()

    record()
    with tqdm(total=total, desc=desc, disable=None if progress is None else not progress, leave=False) as bar:
        for _ in range(cfg.epochs):
            for index in torch.randperm(n_items, generator=generator).split(cfg.batch_size):
                loss = batch_loss(index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(loss.item())
                step += 1
                bar.update()
                if step in at:
                    record()
    model.eval()
    return pd.DataFrame(rows)


def train_sft(
    model: Transformer, train: PairSet, cfg: TrainConfig, evaluate: EvalFn, progress: bool | None = None
) -> pd.DataFrame:
    """SFT on (s, y_w) of every training pair (Park Eq. 4), in place. Returns one row per evaluation."""
    batch = collate(train.prompt, train.chosen)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        b = batch.select(index)
        return sft_loss(sequence_logps(model(b.tokens), b.tokens, b.response_mask))

    return _optimize(model, len(train), cfg, batch_loss, evaluate, "SFT", progress)


def train_dpo(
    policy: Transformer, reference: Transformer, train: PairSet, cfg: DPOConfig, evaluate: EvalFn, progress: bool | None = None
) -> pd.DataFrame:
    """DPO of `policy` against a frozen `reference` (Park Eq. 2), in place. Returns one row per evaluation."""
    batch = collate_pairs(train)  # chosen rows 0..n−1, rejected rows n..2n−1
    reference_chosen_logps, reference_rejected_logps = pair_logps(reference, batch)  # (n,) each
    n = len(train)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        b = batch.select(torch.cat([index, index + n]))
        logps = sequence_logps(policy(b.tokens), b.tokens, b.response_mask)  # (2·batch,)
        policy_chosen_logps, policy_rejected_logps = logps.chunk(2)
        losses, _, _ = dpo_loss(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps[index], reference_rejected_logps[index], cfg.beta
        )
        return losses.mean()

    return _optimize(policy, n, cfg, batch_loss, evaluate, f"DPO β={cfg.beta:g}", progress)
