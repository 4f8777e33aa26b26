"""Single-prompt DPO runs as the members of one ensemble against a plain loop over one model at a time."""

import copy

import pytest
import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.model import build_model
from dpo_toolkit.studies.likelihood_displacement.persona import PersonaConfig, answer_logps
from dpo_toolkit.studies.likelihood_displacement.single_prompt import SLOW_HEAD, single_prompt_dpo_members
from dpo_toolkit.studies.likelihood_displacement.theory import single_token_dpo_loss


def one_run(reference, prompt, y_pos, y_neg, beta, cfg, head):
    """The textbook loop on one model: torch's optimizer over its own parameters, the head left out of it
    (frozen) or in a group at SLOW_HEAD × the rate (slow). Returns (π_ref, π_θ), (V,) each."""
    policy = copy.deepcopy(reference).requires_grad_(True)
    head_params = [*policy.ln_final.parameters(), *policy.unembed.parameters()]
    body = [p for p in policy.parameters() if all(p is not q for q in head_params)]
    groups = {"trained": [{"params": body + head_params}], "frozen": [{"params": body}],
              "slow": [{"params": body}, {"params": head_params, "lr": SLOW_HEAD * cfg.lr}]}[head]  # fmt: skip
    torch_optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg.optimizer]
    optimizer = torch_optimizer(groups, lr=cfg.lr)
    reference_logps = answer_logps(reference, prompt[None])[0]
    for _ in range(cfg.epochs):
        loss = single_token_dpo_loss(answer_logps(policy, prompt[None])[0], reference_logps, y_pos, y_neg, beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return reference_logps.double().exp(), answer_logps(policy, prompt[None])[0].double().exp()


@pytest.mark.parametrize("head", ["trained", "frozen", "slow"])
@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.5), ("adam", 1e-2), ("rmsprop", 1e-3)])
def test_runs_as_members_equal_one_run_at_a_time(head, optimizer, lr):
    cfg = PersonaConfig(n_statements=6)
    references = [build_model(cfg.model_config(d_model=16), seed=s).requires_grad_(False) for s in (0, 1, 0)]
    prompts = torch.tensor([[cfg.token("Q"), cfg.token(f"s{i}"), cfg.token("A")] for i in (0, 1, 2)])
    pairs = [("No", "Never"), ("Yes", "Sure"), ("Yes", "No")]  # each member its own reference, prompt and pair
    y_pos, y_neg = [cfg.token(p) for p, _ in pairs], [cfg.token(n) for _, n in pairs]
    train = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.0, epochs=8, batch_size=1, grad_clip=None, n_evals=1)
    before, after = single_prompt_dpo_members(references, prompts, y_pos, y_neg, 0.1, train, head)
    assert before.shape == after.shape == (3, len(cfg.vocab)) and before.dtype == torch.float64
    for i, reference in enumerate(references):
        alone_before, alone_after = one_run(reference, prompts[i], y_pos[i], y_neg[i], 0.1, train, head)
        torch.testing.assert_close(before[i], alone_before, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(after[i], alone_after, rtol=1e-4, atol=1e-6)
        assert (after[i] - before[i]).abs().max() > 1e-3  # every member trained
    assert not torch.allclose(after[0], after[2], atol=1e-3)  # one reference, two pairs: two different runs


def test_members_need_one_prompt_and_pair_each():
    cfg = PersonaConfig(n_statements=6)
    model = build_model(cfg.model_config(d_model=16), seed=0)
    train = TrainConfig(optimizer="sgd", lr=0.1, epochs=1, batch_size=1, grad_clip=None, n_evals=1)
    with pytest.raises(ValueError, match="one prompt and pair per reference"):
        single_prompt_dpo_members([model, model], torch.zeros(1, 3, dtype=torch.long), [1, 1], [2, 2], 0.1, train)
