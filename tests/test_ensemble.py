import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import DPOConfig, EvalConfig, TrainConfig
from dpo_toolkit.core.dpo_train import train_dpo, train_dpo_ensemble
from dpo_toolkit.core.ensemble import Ensemble, References
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.generate import greedy_answers, sample_responses
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.train import clip_per_model, train_sft


@pytest.fixture
def three(tiny_model_cfg):
    return [build_model(tiny_model_cfg, seed=s) for s in range(3)]


def test_forward_equals_each_model(three):
    ensemble = Ensemble(three)
    tokens = torch.randint(0, 12, (5, 7))
    expected = torch.stack([m(tokens) for m in three])
    assert torch.allclose(ensemble(tokens), expected, atol=1e-5)
    per_model = torch.randint(0, 12, (3, 5, 7))
    assert torch.allclose(ensemble(per_model), torch.stack([m(t) for m, t in zip(three, per_model, strict=True)]), atol=1e-5)
    for i, m in enumerate(three):
        for (name, a), b in zip(ensemble.member(i).named_parameters(), m.parameters(), strict=True):
            assert torch.equal(a, b), name


def test_decoding_is_per_model_and_samples_share_random_numbers(three):
    ensemble = Ensemble(three)
    prompts = np.array([3, 17, 8])
    assert greedy_answers(ensemble, prompts) == [greedy_answers(m, prompts) for m in three]
    batched = sample_responses(ensemble, prompts, 5, seed=2)
    for i, m in enumerate(three):
        alone = sample_responses(m, prompts, 5, seed=2)
        assert torch.equal(batched.tokens[i], alone.tokens)
        assert torch.equal(batched.response_mask[i], alone.response_mask)


def test_evaluator_rows_equal_per_model_evaluation(three, tiny_pairs, tiny_data_cfg):
    _, test = tiny_pairs
    rows = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=4), reference=three[0])(Ensemble(three), betas=[0.1, 0.2, 0.3])
    for row, model, beta in zip(rows, three, [0.1, 0.2, 0.3], strict=True):
        alone = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=4), reference=three[0])(model, betas=beta)
        assert row == pytest.approx(alone, rel=1e-4, abs=1e-5)


def test_clip_per_model_matches_torch_clip(three):
    grads = [[torch.randn_like(p) * 3 for p in m.parameters()] for m in three]
    ensemble = Ensemble(three)
    for name_index, p in enumerate(ensemble.params.values()):
        p.grad = torch.stack([g[name_index] for g in grads])
    clip_per_model(list(ensemble.params.values()), 1.5)
    for i, m in enumerate(three):
        for p, g in zip(m.parameters(), grads[i], strict=True):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.5)
        for p, q in zip(m.parameters(), ensemble.params.values(), strict=True):
            assert torch.allclose(p.grad, q.grad[i], atol=1e-6)


@pytest.mark.parametrize(("optimizer", "grad_clip"), [("rmsprop", None), ("adamw", 0.5)])
def test_batched_training_equals_per_beta_training(tiny_model_cfg, tiny_pairs, tiny_data_cfg, optimizer, grad_clip):
    train, test = tiny_pairs
    reference = build_model(tiny_model_cfg, seed=0)
    train_sft(reference, train, TrainConfig(lr=1e-2, epochs=2, batch_size=16, n_evals=1), lambda m: {}, progress=False)
    reference.requires_grad_(False)
    betas = [0.01, 0.3, 2.0]
    cfgs = [
        DPOConfig(optimizer=optimizer, lr=1e-3, epochs=2, batch_size=8, grad_clip=grad_clip, n_evals=3, beta=b) for b in betas
    ]
    ensemble = Ensemble([copy.deepcopy(reference) for _ in betas])
    evaluate = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=reference)
    batched = train_dpo_ensemble(ensemble, reference, train, cfgs, evaluate, progress=False)
    for i, cfg in enumerate(cfgs):
        policy = copy.deepcopy(reference).requires_grad_(True)
        alone_eval = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=reference)
        alone = train_dpo(policy, reference, train, cfg, alone_eval, progress=False)
        mine = batched[batched["member"] == i].drop(columns=["member", "beta"]).reset_index(drop=True)
        # TRL's strict accuracy: at step 0 every reward is 0 up to float noise, which the batched and the
        # single-model paths round differently (the book's `accuracy` has a tolerance for that)
        noise_decided = ["rewards/accuracies"]
        pd.testing.assert_frame_equal(mine.drop(columns=noise_decided), alone.drop(columns=noise_decided), rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(policy.named_parameters(), ensemble.member(i).parameters(), strict=True):
            if name == "attn.W_QKV.bias":  # the key bias has zero gradient (softmax is shift-invariant), so
                d = tiny_model_cfg.d_model  # Adam/RMSprop amplify its float noise; it changes no output
                p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
            assert torch.allclose(p, q, atol=1e-5), name
    assert not torch.allclose(ensemble.params["unembed.weight"][0], ensemble.params["unembed.weight"][2])


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "rmsprop", "sgd"])
def test_members_with_their_own_learning_rate_and_weight_decay_equal_separate_runs(
    tiny_model_cfg, tiny_pairs, tiny_data_cfg, optimizer
):
    """Per-member lr and weight decay in one batched ensemble (optim.MemberwiseOptimizer) against
    one train_dpo run per member, on the same minibatches."""
    train, test = tiny_pairs
    reference = build_model(tiny_model_cfg, seed=0)
    train_sft(reference, train, TrainConfig(lr=1e-2, epochs=2, batch_size=16, n_evals=1), lambda m: {}, progress=False)
    reference.requires_grad_(False)
    lr_scale = 100 if optimizer == "sgd" else 1  # plain SGD needs larger steps to move in a few updates
    members = [(0.1, 1e-3, 0.0), (0.1, 3e-4, 0.1), (0.5, 3e-3, 0.01)]  # (β, lr, weight decay)
    cfgs = [
        DPOConfig(
            optimizer=optimizer, lr=lr * lr_scale, weight_decay=wd, epochs=2, batch_size=8, grad_clip=None, n_evals=2, beta=b
        )
        for b, lr, wd in members
    ]
    evaluate = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=reference)
    ensemble = Ensemble([copy.deepcopy(reference) for _ in cfgs])
    batched = train_dpo_ensemble(ensemble, reference, train, cfgs, evaluate, progress=False)
    finals = []
    for i, cfg in enumerate(cfgs):
        policy = copy.deepcopy(reference).requires_grad_(True)
        alone_eval = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=reference)
        alone = train_dpo(policy, reference, train, cfg, alone_eval, progress=False)
        mine = batched[batched["member"] == i].drop(columns=["member", "beta"]).reset_index(drop=True)
        # TRL's strict accuracy: at step 0 every reward is 0 up to float noise, which the batched and the
        # single-model paths round differently (the book's `accuracy` has a tolerance for that)
        noise_decided = ["rewards/accuracies"]
        pd.testing.assert_frame_equal(mine.drop(columns=noise_decided), alone.drop(columns=noise_decided), rtol=1e-4, atol=1e-5)
        d = tiny_model_cfg.d_model
        for (name, p), q in zip(policy.named_parameters(), ensemble.member(i).parameters(), strict=True):
            if name == "attn.W_QKV.bias":  # the key bias has zero gradient: Adam/RMSprop amplify its float noise
                p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
            assert torch.allclose(p, q, atol=1e-5), (name, float((p - q).abs().max()))
        finals.append(ensemble.member(i).unembed.weight.detach())
    moved = [float((f - reference.unembed.weight).abs().max()) for f in finals]
    assert min(moved) > 1e-4 and len({round(m, 6) for m in moved}) == 3, moved  # every member trained, each its own way


def test_memberwise_optimizer_step_against_one_torch_optimizer_per_member():
    from dpo_toolkit.core.optim import MemberwiseOptimizer, make_optimizer

    torch.manual_seed(0)
    start, grads = torch.randn(3, 4, 5), [torch.randn(3, 4, 5) for _ in range(3)]
    lrs, wds = [0.1, 0.01, 0.05], [0.0, 0.5, 0.1]
    for name in ("adamw", "adam", "rmsprop", "sgd"):
        stacked = start.clone().requires_grad_(True)
        memberwise = MemberwiseOptimizer([stacked], name, lrs, wds)
        singles = [start[i].clone().requires_grad_(True) for i in range(3)]
        cfgs = [TrainConfig(optimizer=name, lr=lr, weight_decay=wd) for lr, wd in zip(lrs, wds, strict=True)]
        optimizers = [make_optimizer([p], cfg) for p, cfg in zip(singles, cfgs, strict=True)]
        for g in grads:
            stacked.grad = g.clone()
            memberwise.step()
            for i, (p, opt) in enumerate(zip(singles, optimizers, strict=True)):
                p.grad = g[i].clone()
                opt.step()
        for i, p in enumerate(singles):
            assert torch.allclose(stacked[i], p, rtol=1e-5, atol=1e-6), (name, i, float((stacked[i] - p).abs().max()))


def test_ensemble_configs_may_differ_in_beta_lr_weight_decay_and_seed_only(three, tiny_pairs):
    train, _ = tiny_pairs
    cfgs = [DPOConfig(beta=0.1), DPOConfig(beta=0.2, batch_size=8), DPOConfig(beta=0.3)]
    with pytest.raises(ValueError, match="differ in beta, lr, weight_decay and seed only"):
        train_dpo_ensemble(Ensemble(three), three[0], train, cfgs, lambda e, betas: [{}] * 3)
    with pytest.raises(ValueError, match="one DPOConfig per model"):
        train_dpo_ensemble(Ensemble(three), three[0], train, cfgs[:2], lambda e, betas: [{}] * 3)
    with pytest.raises(ValueError, match="2 references for 3 models"):
        train_dpo_ensemble(Ensemble(three), Ensemble(three[:2]), train, [DPOConfig()] * 3, lambda e, betas: [{}] * 3)


def test_the_dpo_trainers_hand_each_runs_beta_to_the_evaluation(three, tiny_pairs):
    """β travels one route, in each run's DPOConfig: the trainers pass it to every evaluation."""
    train, _ = tiny_pairs
    cfgs = [DPOConfig(epochs=1, batch_size=16, n_evals=2, beta=b) for b in (0.05, 0.5, 3.0)]
    seen = []
    train_dpo_ensemble(Ensemble(three), three[0], train, cfgs, lambda p, betas: seen.append(betas) or [{}] * 3, progress=False)
    assert seen and all(betas == [0.05, 0.5, 3.0] for betas in seen)
    seen.clear()
    train_dpo(copy.deepcopy(three[1]), three[0], train, cfgs[2], lambda p, betas: seen.append(betas) or {}, progress=False)
    assert seen and all(betas == [3.0] for betas in seen)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_replicates_as_members_equal_separate_runs(tiny_model_cfg, tiny_pairs, tiny_data_cfg, optimizer):
    """Replicates as members: three members, each with its own frozen reference (its own SFT from
    its own initialisation) and its own seed (its own batch order), trained as one ensemble, equal
    three separate train_dpo runs, each against its reference with its seed: curves (every metric,
    KL included, against the member's own reference) and weights."""
    train, test = tiny_pairs
    references = []
    for seed in (0, 1, 2):
        reference = build_model(tiny_model_cfg, seed=seed)
        sft = TrainConfig(lr=1e-2, epochs=2, batch_size=16, n_evals=1, seed=seed)
        train_sft(reference, train, sft, lambda m: {}, progress=False)
        references.append(reference.requires_grad_(False))
    cfgs = [
        DPOConfig(optimizer=optimizer, lr=1e-3, epochs=2, batch_size=8, grad_clip=1.0, n_evals=3, beta=0.2, seed=seed)
        for seed in (3, 4, 5)
    ]
    evaluate = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=Ensemble(references))
    ensemble = Ensemble([copy.deepcopy(r) for r in references])
    batched = train_dpo_ensemble(ensemble, Ensemble(references), train, cfgs, evaluate, progress=False)
    finals = []
    for i, (reference, cfg) in enumerate(zip(references, cfgs, strict=True)):
        policy = copy.deepcopy(reference).requires_grad_(True)
        alone_eval = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=reference)
        alone = train_dpo(policy, reference, train, cfg, alone_eval, progress=False)
        mine = batched[batched["member"] == i].drop(columns=["member", "beta"]).reset_index(drop=True)
        noise_decided = ["rewards/accuracies"]  # TRL's strict accuracy: float noise decides the ties at step 0
        pd.testing.assert_frame_equal(mine.drop(columns=noise_decided), alone.drop(columns=noise_decided), rtol=1e-4, atol=1e-5)
        d = tiny_model_cfg.d_model
        starts = reference.parameters()
        for (name, p), q, p0 in zip(policy.named_parameters(), ensemble.member(i).parameters(), starts, strict=True):
            if name == "attn.W_QKV.bias":  # the key bias has zero gradient: its float noise changes no output
                p, q, p0 = (torch.cat([t[:d], t[2 * d :]]) for t in (p, q, p0))
            # RMSprop turns a gradient at float-noise level into a full step of either sign, so an element may
            # differ by a step or two (at one thread ln2.bias did); the runs must agree to 0.1 % of how far they moved
            assert (p - q).norm() <= 1e-3 * (p - p0).norm() + 1e-6, (name, i, float((p - q).norm()), float((p - p0).norm()))
        finals.append(mine["loss"].iloc[-1])
    assert len(set(finals)) == 3  # the replicates did differ


def test_per_member_batch_orders_are_each_members_own_and_shared_when_seeds_agree():
    """optimize draws one batch order per member from its own seed when the seeds differ, and one
    shared order (indices of shape (batch,), as before) when they agree."""
    from dpo_toolkit.core.train import optimize

    for seeds, shape in (((7, 7), (4,)), ((7, 8), (2, 4))):
        params = [torch.zeros(2, 3, requires_grad=True)]
        seen = []

        def batch_loss(index, params=params, seen=seen):
            seen.append(index.clone())
            return params[0].sum(-1) * 0 + 1.0

        cfgs = [TrainConfig(optimizer="sgd", epochs=1, batch_size=4, n_evals=1, seed=s) for s in seeds]
        optimize(params, batch_loss, 8, cfgs, lambda: [{}, {}], stacked=True, progress=False)
        assert seen[0].shape == shape
        expected = [torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in seeds]
        got = torch.cat(seen, dim=-1)
        if len(set(seeds)) == 1:
            assert torch.equal(got, expected[0])
        else:
            assert all(torch.equal(got[i], expected[i]) for i in range(2)) and not torch.equal(got[0], got[1])


def test_sft_of_replicates_as_members_equals_separate_runs(tiny_model_cfg, tiny_pairs):
    """Three initialisations and three seeds (batch orders) trained by SFT as one ensemble equal three
    separate train_sft runs, curves and weights."""
    from dpo_toolkit.core.train import train_sft_ensemble

    train, _ = tiny_pairs
    models = [build_model(tiny_model_cfg, seed=s) for s in (0, 1, 2)]
    cfgs = [
        TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=16, n_evals=2, seed=s) for s in (5, 6, 7)
    ]
    ensemble = Ensemble(models)
    batched = train_sft_ensemble(ensemble, train, cfgs, lambda p: [{}] * 3, progress=False)
    for i, (model, cfg) in enumerate(zip(models, cfgs, strict=True)):
        alone = train_sft(copy.deepcopy(model), train, cfg, lambda m: {}, progress=False)
        mine = batched[batched["member"] == i].drop(columns="member").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone, rtol=1e-4, atol=1e-5)
    singles = [copy.deepcopy(m) for m in models]
    for m, cfg in zip(singles, cfgs, strict=True):
        train_sft(m, train, cfg, lambda m: {}, progress=False)
    d = tiny_model_cfg.d_model
    for i, single in enumerate(singles):
        for (name, p), q in zip(single.named_parameters(), ensemble.member(i).parameters(), strict=True):
            if name == "attn.W_QKV.bias":  # the key bias has zero gradient: Adam amplifies its float noise
                p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
            assert torch.allclose(p, q, atol=1e-5), (name, i)
    assert not torch.allclose(ensemble.params["unembed.weight"][0], ensemble.params["unembed.weight"][1])


def test_references_stand_for_the_ensemble_of_their_members(tiny_model_cfg, tiny_pairs, tiny_data_cfg):
    """References (each distinct model stored and run once) give what the Ensemble of one copy per
    member gives: logits on shared and per-member tokens, log-probs, weights, a member, and every
    metric of an evaluation (KL against each member's own reference included)."""
    from dpo_toolkit.core.evaluate import pair_logps

    _, test = tiny_pairs
    models = [build_model(tiny_model_cfg, seed=s).requires_grad_(False) for s in (0, 1)]
    index = [1, 0, 1, 1]
    references, expanded = References(models, index), Ensemble([models[i] for i in index])
    assert len(references) == 4
    tokens = torch.randint(0, tiny_model_cfg.d_vocab, (3, 5))
    assert torch.allclose(references(tokens), expanded(tokens), atol=1e-5)
    per_member = torch.randint(0, tiny_model_cfg.d_vocab, (4, 3, 5))
    assert torch.allclose(references(per_member), expanded(per_member), atol=1e-5)
    for mine, theirs in zip(pair_logps(references, test), pair_logps(expanded, test), strict=True):
        assert mine.shape == (4, len(test)) and torch.allclose(mine, theirs, atol=1e-4)
    assert all(torch.equal(references.params[n], expanded.params[n]) for n in expanded.params)
    assert all(torch.equal(p, q) for p, q in zip(references.member(0).parameters(), models[1].parameters(), strict=True))
    policies = Ensemble([build_model(tiny_model_cfg, seed=s) for s in (5, 6, 7, 8)])
    betas = [0.1, 0.2, 0.3, 0.4]
    rows = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=references)(policies, betas=betas)
    expected = Evaluator(test, tiny_data_cfg, EvalConfig(kl_samples=3), reference=expanded)(policies, betas=betas)
    pd.testing.assert_frame_equal(pd.DataFrame(rows), pd.DataFrame(expected), rtol=1e-4, atol=1e-5)
    assert pd.DataFrame(rows)["kl"].nunique() == 4
    with pytest.raises(ValueError, match="every index must name one of the 2 models"):
        References(models, [0, 2])
