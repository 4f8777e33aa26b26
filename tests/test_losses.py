import math

import pytest
import torch

from dpo_toolkit.core.losses import dpo_loss, implicit_reward, sequence_logps, sft_loss


def brute_force_logps(logits, tokens, response_mask):
    out = []
    for b in range(tokens.shape[0]):
        total = 0.0
        for t in range(1, tokens.shape[1]):
            if response_mask[b, t]:
                total += torch.log_softmax(logits[b, t - 1], -1)[tokens[b, t]].item()
        out.append(total)
    return torch.tensor(out)


@pytest.fixture
def batch():
    tokens = torch.tensor([[5, 10, 7, 11, 11, 11], [1, 2, 3, 10, 4, 11]])
    response_mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    logits = torch.randn(2, 6, 12, dtype=torch.float64)
    return logits, tokens, response_mask


def test_sequence_logps_matches_brute_force(batch):
    logits, tokens, response_mask = batch
    assert torch.allclose(
        sequence_logps(logits, tokens, response_mask), brute_force_logps(logits, tokens, response_mask).double()
    )


def test_prompt_and_pad_logits_change_nothing(batch):
    logits, tokens, response_mask = batch
    base = sequence_logps(logits, tokens, response_mask)
    # logits[:, t] only score tokens[:, t + 1]; perturb every position that scores a non-response token.
    unused = torch.ones_like(response_mask)
    unused[:, :-1] = ~response_mask[:, 1:]
    perturbed = logits + 100 * torch.randn_like(logits) * unused[..., None]
    assert torch.allclose(sequence_logps(perturbed, tokens, response_mask), base)
    other_tokens = tokens.clone()
    other_tokens[~response_mask & (torch.arange(6) > 3)] = 3  # pad positions of row 0
    other_tokens[0, 0] = 9  # a prompt token
    assert torch.allclose(sequence_logps(logits, other_tokens, response_mask), base)
    # ...while a response logit does matter
    logits[0, 2, tokens[0, 3]] += 1.0
    assert not torch.allclose(sequence_logps(logits, tokens, response_mask), base)


def test_sequence_logps_gradient_matches_finite_differences(batch):
    logits, tokens, response_mask = batch
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, tokens, response_mask), (logits.requires_grad_(),))


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -1.5, -7.0])
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.3)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    assert torch.equal(chosen_rewards, torch.zeros(3))
    assert torch.equal(rejected_rewards, torch.zeros(3))


def test_dpo_loss_hand_computed():
    # β = 0.5; chosen: log π − log π_ref = −1 − (−1.5) = 0.5 → r_w = 0.25; rejected: −2 − (−1) = −1 → r_l = −0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.0]), beta=0.5
    )
    assert chosen_rewards.item() == pytest.approx(0.25)
    assert rejected_rewards.item() == pytest.approx(-0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.75)))
    assert not chosen_rewards.requires_grad


def test_dpo_loss_gradient_matches_finite_differences():
    inputs = tuple(torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(lambda *x: dpo_loss(*x, beta=0.7)[0], inputs)
    # d loss / d policy_chosen_logps = −β σ(−(r_w − r_l)) at a hand-checked point
    pc = torch.tensor([0.0], requires_grad=True)
    dpo_loss(pc, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=2.0)[0].sum().backward()
    assert pc.grad.item() == pytest.approx(-2.0 * 0.5)


def test_sft_loss_and_implicit_reward():
    assert sft_loss(torch.tensor([-1.0, -3.0])).item() == pytest.approx(2.0)
    assert torch.allclose(implicit_reward(torch.tensor([-1.0]), torch.tensor([-3.0]), 0.1), torch.tensor([0.2]))
