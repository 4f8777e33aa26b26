import dataclasses

import pytest

from dpo_toolkit.core.config import (
    ConfigError,
    DataConfig,
    DPOConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    check_fits,
    config_hash,
)

BAD = [
    (DataConfig, {"prompt_min": -1}, "DataConfig.prompt_min must be an integer ≥ 0"),
    (DataConfig, {"prompt_min": 10, "prompt_max": 5}, "DataConfig.prompt_max must be an integer in [prompt_min=10, 99999]"),
    (DataConfig, {"prompt_max": 100_000}, "DataConfig.prompt_max"),
    (DataConfig, {"window": 0}, "DataConfig.window must be an integer ≥ 1, got 0"),
    (DataConfig, {"window": 2.5}, "DataConfig.window"),
    (DataConfig, {"test_fraction": 0.0}, "DataConfig.test_fraction must be a number in (0, 1), got 0.0"),
    (DataConfig, {"test_fraction": 1.0}, "DataConfig.test_fraction"),
    (DataConfig, {"prompt_min": 1, "prompt_max": 1, "test_fraction": 0.5}, "≥ 1 prompt on each side"),
    (DataConfig, {"seed": -3}, "DataConfig.seed"),
    (ModelConfig, {"d_model": 130}, "ModelConfig.d_model must be a positive integer divisible by n_heads=4, got 130"),
    (ModelConfig, {"n_heads": 0}, "ModelConfig.n_heads must be an integer ≥ 1"),
    (ModelConfig, {"d_mlp": 0}, "ModelConfig.d_mlp"),
    (ModelConfig, {"n_ctx": 3}, "ModelConfig.n_ctx must be an integer ≥ 4"),
    (ModelConfig, {"d_vocab": 11}, "ModelConfig.d_vocab must be an integer ≥ 12"),
    (TrainConfig, {"optimizer": "lion"}, "TrainConfig.optimizer must be one of 'adamw', 'adam', 'rmsprop', 'sgd', got 'lion'"),
    (TrainConfig, {"lr": 0.0}, "TrainConfig.lr must be a number in (0, 1]"),
    (TrainConfig, {"lr": float("nan")}, "TrainConfig.lr"),
    (TrainConfig, {"weight_decay": -0.1}, "TrainConfig.weight_decay must be a number ≥ 0"),
    (TrainConfig, {"epochs": 0}, "TrainConfig.epochs must be an integer ≥ 1"),
    (TrainConfig, {"batch_size": 0}, "TrainConfig.batch_size"),
    (TrainConfig, {"grad_clip": 0.0}, "TrainConfig.grad_clip must be None or a number > 0"),
    (TrainConfig, {"n_evals": 0}, "TrainConfig.n_evals"),
    (TrainConfig, {"seed": -1}, "TrainConfig.seed"),
    (DPOConfig, {"beta": -0.5}, "DPOConfig.beta must be a number in (0, 1000], got -0.5"),
    (DPOConfig, {"beta": 0}, "DPOConfig.beta"),
    (DPOConfig, {"beta": True}, "DPOConfig.beta"),
    (DPOConfig, {"epochs": 0, "beta": 0.1}, "DPOConfig.epochs"),
    (EvalConfig, {"kl_samples": 1}, "EvalConfig.kl_samples must be an integer ≥ 2"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD)
def test_bad_values_raise_naming_the_field(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert message in str(info.value)


def test_defaults_are_valid_and_frozen():
    cfg = DPOConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 1.0  # type: ignore[misc]
    assert dataclasses.replace(cfg, beta=0.5).beta == 0.5
    with pytest.raises(ConfigError, match="beta"):
        dataclasses.replace(cfg, beta=-1.0)


def test_check_fits_names_n_ctx():
    check_fits(ModelConfig(), DataConfig(prompt_min=100, prompt_max=500, window=10))
    with pytest.raises(ConfigError, match=r"ModelConfig.n_ctx must be ≥ 12"):
        check_fits(ModelConfig(), DataConfig(prompt_min=1, prompt_max=99_000, window=5))


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(DataConfig(), TrainConfig()) == config_hash(DataConfig(), TrainConfig())
    assert config_hash(DataConfig(), TrainConfig()) != config_hash(DataConfig(window=6), TrainConfig())
    assert config_hash(DPOConfig(beta=0.1)) != config_hash(DPOConfig(beta=0.2))


def test_dpo_config_from_a_train_config_keeps_its_optimisation_and_validates():
    sft = TrainConfig(optimizer="adam", lr=3e-4, weight_decay=0.0, epochs=100, batch_size=512, grad_clip=None, n_evals=100)
    dpo = DPOConfig.from_train(sft, epochs=10, n_evals=10, beta=0.5)
    assert (dpo.optimizer, dpo.lr, dpo.batch_size, dpo.grad_clip, dpo.epochs, dpo.beta) == ("adam", 3e-4, 512, None, 10, 0.5)
    with pytest.raises(ConfigError, match=r"DPOConfig\.beta"):
        DPOConfig.from_train(sft, beta=-1.0)
