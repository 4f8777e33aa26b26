"""Single-prompt DPO runs as the members of one ensemble against a plain loop over one model at a time."""

import copy

import pytest
import torch

from dpo_toolkit.core.config import ConfigError, TrainConfig
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


def test_persona_lms_as_members_equal_one_lm_at_a_time():
    """Each seed's and lead weight's LM trained as a member of one ensemble against the plain full-batch loop on one
    model (Adam on its own soft-label cross-entropy); the corpora differ in lead weight, so every member its own target."""
    from dpo_toolkit.core.losses import soft_label_sft_loss
    from dpo_toolkit.studies.likelihood_displacement.persona import persona_corpus, train_persona_lms

    corpora = [PersonaConfig(n_statements=6, lead_weight=w) for w in (0.55, 0.95, 0.95)]
    model_cfg = corpora[0].model_config(d_model=16)
    sft = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=20, batch_size=1, grad_clip=None, n_evals=1)
    models = [build_model(model_cfg, seed=s) for s in (0, 0, 1)]
    alone = [copy.deepcopy(m) for m in models]
    train_persona_lms(corpora, models, sft)
    for corpus, model, single in zip(corpora, models, alone, strict=True):
        prompts, _, targets = persona_corpus(corpus)
        optimizer = torch.optim.Adam(single.parameters(), lr=sft.lr)
        for _ in range(sft.epochs):
            loss = soft_label_sft_loss(answer_logps(single, prompts), targets.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        d = model_cfg.d_model
        for (name, p), q in zip(model.named_parameters(), single.parameters(), strict=True):
            if name == "attn.W_QKV.bias":  # the key bias has zero gradient: Adam amplifies its float noise
                p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(models[1].unembed.weight, models[2].unembed.weight)  # every member its own init
    assert not torch.allclose(models[0].unembed.weight, models[1].unembed.weight)  # and its own target
    with pytest.raises(ConfigError, match="d_vocab=20"):  # a corpus of another vocabulary than the models'
        train_persona_lms([PersonaConfig(n_statements=6), PersonaConfig(n_statements=8)], models[:2], sft)
