"""One evaluation of a policy on the test set: OOD rate and sequence error of greedy
answers, and, against a reference, DPO accuracy, margin and KL (Park §3.4).

A policy is one ``Transformer`` or an ``Ensemble``; an ensemble is evaluated in one
batched pass and gives one row per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .config import DataConfig, EvalConfig
from .data import Batch, PairSet, collate_pairs
from .ensemble import Ensemble, References, as_ensemble, check_same_device, distinct_logits, model_device, rows_per_call
from .generate import greedy_answers, sample_responses
from .losses import implicit_reward, sequence_logps
from .metrics import (
    answers_tensor,
    is_ood,
    kl_estimate,
    path_kl,
    reward_accuracy,
    reward_margin,
    sequence_error,
    trl_metrics,
)
from .model import Transformer

ACCURACY_ATOL = 1e-4  # nats: a pair counts as won when its log-ratio margin exceeds this, not float noise


@torch.no_grad()
def score(policy: Transformer | Ensemble, batch: Batch) -> torch.Tensor:
    """Summed response log-probs of every sequence: (batch,) for a model, (M, batch) for an ensemble.

    Sequences shared by several rows (test pairs repeat a prompt's chosen or rejected answer) are scored once,
    and so is each distinct model of ``References`` on rows shared by all its members.
    """
    if isinstance(policy, References) and batch.tokens.ndim == 2:
        logps = score(policy.distinct, batch)  # (distinct models, batch)
        return logps[policy.index.to(logps.device)]  # (M, batch)
    model = as_ensemble(policy)
    device = model_device(model)
    batch = Batch(batch.tokens.to(device), batch.response_mask.to(device))
    if batch.tokens.ndim == 2:  # one batch for every model: score its distinct rows
        keys, inverse = torch.unique(torch.cat([batch.tokens, batch.response_mask.long()], dim=-1), dim=0, return_inverse=True)
        width = batch.tokens.shape[-1]
        distinct = Batch(keys[:, :width], keys[:, width:].bool())
    else:
        distinct, inverse = batch, None
    chunk, chunks = rows_per_call(len(model)), []
    for i in range(0, distinct.tokens.shape[-2], chunk):
        tokens, mask = distinct.tokens[..., i : i + chunk, :], distinct.response_mask[..., i : i + chunk, :]
        chunks.append(sequence_logps(model(tokens), tokens, mask))
    logps = torch.cat(chunks, dim=-1)  # (M, distinct rows), on the model's device
    if inverse is not None:
        logps = logps[:, inverse]  # (M, batch)
    return logps[0] if isinstance(policy, Transformer) else logps


def pair_logps(policy: Transformer | Ensemble, pairs: PairSet | Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (chosen, rejected) of every pair: (n,) each, or (M, n) for an ensemble.

    Takes the pairs, or their ``collate_pairs`` batch to skip tokenization.
    """
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    return score(policy, batch).chunk(2, dim=-1)


class Evaluator:
    """Evaluates policies on a fixed test set; the reference's log-probs are computed once.

    Greedy metrics are over the distinct test prompts (each prompt counted once).
    Accuracy, margin and the change of log π(y+) from the reference (its mean,
    `chosen_logp_change`, and the share of pairs where it fell, `displaced`) are over
    the test pairs, or a fixed random subset of ``eval_cfg.max_pairs`` of them. KL
    samples `kl_samples` responses per test prompt from the policy with a fixed seed (the same draws for every model), and
    reports two unbiased estimates of Eq. 6 with their standard errors: `kl`, the exact
    per-token KL summed along each sampled path, and `kl_mc`, the plain log-ratio.

    Models compute on their own device (the reference on the policies'); the metrics are
    computed from their outputs on the CPU, in float64.

    With a reference, a call takes `betas`, the β of the DPO rewards of the runs it evaluates
    (one value for every model, or one per model): the DPO trainers pass each run's
    ``DPOConfig.beta``, so that β travels one route, in the run's config. Without a reference only
    greedy metrics are computed.
    """

    def __init__(
        self,
        test: PairSet,
        data_cfg: DataConfig,
        eval_cfg: EvalConfig,
        reference: Transformer | Ensemble | References | None = None,
    ):
        self.data_cfg, self.eval_cfg, self.reference = data_cfg, eval_cfg, reference
        self.prompts = test.prompts  # (n_prompts,)
        self.span = data_cfg.prompt_max - data_cfg.prompt_min
        if eval_cfg.max_pairs is not None and eval_cfg.max_pairs < len(test):
            keep = np.sort(np.random.default_rng(eval_cfg.seed).choice(len(test), eval_cfg.max_pairs, replace=False))
            test = PairSet(test.prompt[keep], test.chosen[keep], test.rejected[keep])
        self.test_batch = collate_pairs(test)
        if reference is not None:  # kept on the CPU, where the metrics are computed: (n,) each, or (M, n) per reference
            self.reference_chosen_logps, self.reference_rejected_logps = (x.cpu() for x in pair_logps(reference, self.test_batch))

    @torch.no_grad()
    def __call__(self, policy: Transformer | Ensemble, betas: float | Sequence[float] | None = None):
        """Metrics of one model (a dict), or of each model of an ensemble (a list of dicts); with a
        reference, `betas` are the β of the runs evaluated (one, or one per model)."""
        model = as_ensemble(policy)
        if self.reference is not None:
            check_same_device(model, self.reference)
        answers = answers_tensor(greedy_answers(model, self.prompts))  # (M, n_prompts)
        prompts = torch.as_tensor(self.prompts, dtype=torch.float64)
        columns = {
            "ood_rate": is_ood(answers, prompts, self.data_cfg.window).double().mean(-1),
            "seq_error": sequence_error(answers, prompts, self.span).mean(-1),
        }
        if self.reference is not None:
            if betas is None:
                raise ValueError("Evaluator with a reference needs the β of the runs it evaluates (betas: one, or one per model)")
            betas = torch.as_tensor(betas, dtype=torch.float64).reshape(-1, 1)  # (M, 1) or (1, 1)
            if len(betas) not in (1, len(model)):
                raise ValueError(f"Evaluator has {len(betas)} betas for an ensemble of {len(model)} models")
            policy_chosen_logps, policy_rejected_logps = (x.cpu() for x in pair_logps(model, self.test_batch))  # (M, n)
            chosen_rewards = implicit_reward(policy_chosen_logps.double(), self.reference_chosen_logps.double(), betas)
            rejected_rewards = implicit_reward(policy_rejected_logps.double(), self.reference_rejected_logps.double(), betas)
            columns["accuracy"] = reward_accuracy(chosen_rewards, rejected_rewards, atol=ACCURACY_ATOL * betas)
            columns["margin"] = reward_margin(chosen_rewards, rejected_rewards)
            chosen_change = policy_chosen_logps.double() - self.reference_chosen_logps.double()  # (M, n)
            columns["chosen_logp_change"] = chosen_change.mean(-1)  # held-out Δ log π(y+), nats
            columns["displaced"] = (chosen_change < -ACCURACY_ATOL).double().mean(-1)  # share of pairs whose π(y+) fell
            columns.update(trl_metrics(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps))
            columns.update(self.kl(model))
        rows = [{k: float(v[i]) for k, v in columns.items()} for i in range(len(model))]
        return rows[0] if isinstance(policy, Transformer) else rows

    def _reference_logits(self, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
        """The reference's logits (M, rows, T, V) on each model's samples, tokens (M, rows, T): one reference, or each
        distinct model of ``References``, scores each distinct sample of its models once (models sharing random
        numbers often draw the same one); an Ensemble of references (one per model) scores each model's own samples."""
        if isinstance(self.reference, References):
            return self.reference(tokens)
        if isinstance(self.reference, Ensemble):
            return torch.cat([self.reference(tokens[:, i : i + chunk]) for i in range(0, tokens.shape[1], chunk)], 1)
        return distinct_logits(self.reference, tokens)

    @torch.no_grad()
    def kl(self, policy: Transformer | Ensemble) -> dict[str, torch.Tensor]:
        """KL(policy ‖ reference) over the test prompts (Eq. 6): both estimators and their standard errors, each (M,)."""
        model = as_ensemble(policy)
        n = self.eval_cfg.kl_samples
        # (M, n_prompts · n, T) and the logits they were drawn from: the policy is not run again
        samples = sample_responses(model, self.prompts, n, self.eval_cfg.seed)  # (M, n_prompts · n, T)
        # scored by full forward passes of both models, so that a policy equal to the reference has KL exactly 0;
        # the reference scores each distinct sample once (models sharing random numbers often draw the same one)
        chunk = rows_per_call(len(model))
        policy_logits = torch.cat([model(samples.tokens[:, i : i + chunk]) for i in range(0, samples.tokens.shape[1], chunk)], 1)
        reference_logits = self._reference_logits(samples.tokens, chunk).view(policy_logits.shape)  # (M, rows, T, V)
        path = path_kl(policy_logits, reference_logits, samples.response_mask)  # (M, rows)
        mc = sequence_logps(policy_logits, samples.tokens, samples.response_mask) - sequence_logps(
            reference_logits, samples.tokens, samples.response_mask
        )
        n_models = len(model)
        kl, kl_se = kl_estimate(path.view(n_models, -1, n).cpu())
        kl_mc, kl_mc_se = kl_estimate(mc.view(n_models, -1, n).cpu())
        return {"kl": kl, "kl_se": kl_se, "kl_mc": kl_mc, "kl_mc_se": kl_mc_se}
