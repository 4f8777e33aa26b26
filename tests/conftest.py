import numpy as np
import pytest
import torch

from dpo_toolkit.core.config import DataConfig, ModelConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.model import build_model


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=8)


@pytest.fixture
def tiny_data_cfg() -> DataConfig:
    return DataConfig(prompt_min=1, prompt_max=20, window=2, test_fraction=0.3, seed=0)


@pytest.fixture
def tiny_pairs(tiny_data_cfg):
    return make_pairs(tiny_data_cfg)


@pytest.fixture
def tiny_model(tiny_model_cfg):
    return build_model(tiny_model_cfg, seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    np.random.seed(1234)
