"""One evaluation of a policy on the test set: OOD rate and sequence error of greedy
answers, and, against a reference, DPO accuracy, margin and KL (Park §3.4)."""

from __future__ import annotations

import torch

from .config import DataConfig, EvalConfig
from .data import Batch, PairSet, collate_pairs
from .generate import greedy_answers, sample_responses
from .losses import implicit_reward, sequence_logps
from .metrics import answers_tensor, is_ood, kl_estimate, reward_accuracy, reward_margin, sequence_error
from .model import Transformer


@torch.no_grad()
def pair_logps(model: Transformer, pairs: PairSet | Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (chosen (n,), rejected (n,)) of every pair, in one forward pass.

    Takes the pairs, or their ``collate_pairs`` batch to skip tokenization.
    """
    batch = pairs if isinstance(pairs, Batch) else collate_pairs(pairs)
    logps = sequence_logps(model(batch.tokens), batch.tokens, batch.response_mask)  # (2n,)
    return logps.chunk(2)


class Evaluator:
    """Evaluates policies on a fixed test set; the reference's log-probs are computed once.

    Greedy metrics are over the distinct test prompts (each prompt counted once).
    Accuracy and margin are over the test pairs. KL samples `kl_samples` responses
    per test prompt from the policy with a fixed seed, so repeated calls are comparable.
    """

    def __init__(self, test: PairSet, data_cfg: DataConfig, eval_cfg: EvalConfig, reference: Transformer | None = None):
        self.test, self.data_cfg, self.eval_cfg, self.reference = test, data_cfg, eval_cfg, reference
        self.prompts = test.prompts  # (n_prompts,)
        self.span = data_cfg.prompt_max - data_cfg.prompt_min
        self.test_batch = collate_pairs(test)
        if reference is not None:
            self.reference_chosen_logps, self.reference_rejected_logps = pair_logps(reference, self.test_batch)

    @torch.no_grad()
    def __call__(self, policy: Transformer, beta: float | None = None) -> dict[str, float]:
        answers = answers_tensor(greedy_answers(policy, self.prompts))  # (n_prompts,)
        prompts = torch.as_tensor(self.prompts, dtype=torch.float64)
        row = {
            "ood_rate": float(is_ood(answers, prompts, self.data_cfg.window).double().mean()),
            "seq_error": float(sequence_error(answers, prompts, self.span).mean()),
        }
        if self.reference is None:
            return row
        policy_chosen_logps, policy_rejected_logps = pair_logps(policy, self.test_batch)
        chosen_rewards = implicit_reward(policy_chosen_logps, self.reference_chosen_logps, beta)
        rejected_rewards = implicit_reward(policy_rejected_logps, self.reference_rejected_logps, beta)
        row["accuracy"] = float(reward_accuracy(chosen_rewards, rejected_rewards))
        row["margin"] = float(reward_margin(chosen_rewards, rejected_rewards))
        row["kl"], row["kl_se"] = self.kl(policy)
        return row

    @torch.no_grad()
    def kl(self, policy: Transformer) -> tuple[float, float]:
        """KL(policy ‖ reference) over the test prompts (Eq. 6) and its standard error."""
        n = self.eval_cfg.kl_samples
        samples = sample_responses(policy, self.prompts, n, self.eval_cfg.seed)
        policy_logps = sequence_logps(policy(samples.tokens), samples.tokens, samples.response_mask)
        reference_logps = sequence_logps(self.reference(samples.tokens), samples.tokens, samples.response_mask)
        return kl_estimate(policy_logps.view(-1, n), reference_logps.view(-1, n))
