import copy
import math

import pandas as pd
import pytest
import torch

from dpo_toolkit.core.config import DPOConfig, EvalConfig, TrainConfig
from dpo_toolkit.core.dpo_train import train_dpo
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.train import Checkpoint, eval_steps, make_optimizer, optimize, train_sft


def test_eval_steps():
    assert eval_steps(10, 5) == [0, 2, 4, 6, 8, 10]
    assert eval_steps(3, 30) == [0, 1, 2, 3]
    assert eval_steps(7, 2) == [0, 4, 7]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)],
)
def test_make_optimizer(name, cls, tiny_model):
    opt = make_optimizer(tiny_model.parameters(), TrainConfig(optimizer=name, lr=0.01, weight_decay=0.0))
    assert isinstance(opt, cls)
    assert opt.defaults["lr"] == 0.01


def _sft(model, pairs, data_cfg, seed=0, epochs=2):
    train, test = pairs
    cfg = TrainConfig(lr=1e-3, epochs=epochs, batch_size=16, n_evals=2, seed=seed)
    return train_sft(model, train, cfg, Evaluator(test, data_cfg, EvalConfig()), progress=False)


def test_sft_lowers_the_loss_and_records_each_evaluation(tiny_model, tiny_pairs, tiny_data_cfg):
    df = _sft(tiny_model, tiny_pairs, tiny_data_cfg, epochs=6)
    assert list(df["step"]) == eval_steps(6 * math.ceil(len(tiny_pairs[0]) / 16), 2)
    assert {"step", "epoch", "loss", "ood_rate", "seq_error"} <= set(df.columns)
    assert df["loss"].iloc[-1] < df["loss"].iloc[1]
    assert df["epoch"].iloc[-1] == pytest.approx(6.0)


def _dpo(reference, pairs, data_cfg, beta=0.1, seed=0):
    train, _test = pairs
    policy = copy.deepcopy(reference).requires_grad_(True)
    cfg = DPOConfig(
        optimizer="rmsprop", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=8, grad_clip=None, n_evals=3, seed=seed, beta=beta
    )
    evaluate = Evaluator(train, data_cfg, EvalConfig(kl_samples=4), reference=reference)  # margin on the training pairs
    return policy, train_dpo(policy, reference, train, cfg, evaluate, progress=False)


def test_dpo_changes_every_parameter_and_leaves_the_reference_alone(tiny_model, tiny_pairs, tiny_data_cfg):
    reference = tiny_model.requires_grad_(False)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    policy, df = _dpo(reference, tiny_pairs, tiny_data_cfg)
    for name, p in policy.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"
    for name, v in reference.state_dict().items():
        assert torch.equal(v, before[name]), f"reference {name} changed"
    first = df.iloc[0]
    assert (first["kl"], first["margin"], first["accuracy"]) == (0.0, 0.0, 0.0)
    assert df["margin"].iloc[-1] > 0


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_model_cfg, tiny_pairs, tiny_data_cfg):
    from dpo_toolkit.core.model import build_model

    runs = []
    for seed in (0, 0, 1):
        reference = build_model(tiny_model_cfg, seed=0)
        sft = _sft(reference, tiny_pairs, tiny_data_cfg, seed=seed)
        _, dpo = _dpo(reference.requires_grad_(False), tiny_pairs, tiny_data_cfg, seed=seed)
        runs.append(pd.concat([sft, dpo]))
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not runs[0]["loss"].equals(runs[2]["loss"])


def test_resume_from_the_step_zero_checkpoint_adds_no_duplicate_rows(tmp_path):
    cfg = TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.0, epochs=2, batch_size=2, grad_clip=None, n_evals=2)

    def run(evaluate_hook=None, checkpoint=None):
        params = [torch.ones(1, 3, requires_grad=True)]

        def evaluate():
            if evaluate_hook is not None:
                evaluate_hook()
            return {"value": float(params[0].detach().sum())}

        loss = lambda index: (params[0] ** 2).sum(-1)  # noqa: E731
        return optimize(
            params, loss, 4, [cfg], evaluate, stacked=True, checkpoint=checkpoint and Checkpoint(checkpoint), progress=False
        )

    unbroken = run()
    calls = []

    def killed_after_the_first_evaluation():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # dies after the step-0 checkpoint was written

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(killed_after_the_first_evaluation, checkpoint)
    assert checkpoint.exists()
    pd.testing.assert_frame_equal(run(checkpoint=checkpoint), unbroken)
