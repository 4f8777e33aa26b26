import pytest
import torch

from dpo_toolkit.core.device import resolve_device


def test_cpu_is_the_default_and_bad_names_are_refused():
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_and_absent_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device=.cuda. asks for CUDA, but torch .* sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="cuda:1"):
        resolve_device("cuda:1")


def test_the_device_follows_the_model_and_keys_its_cached_runs(tmp_path, tiny_model_cfg):
    from dpo_toolkit.core.ensemble import Ensemble, as_ensemble, model_device
    from dpo_toolkit.core.model import build_model
    from dpo_toolkit.core.runner import RunKey, cached_model

    model = build_model(tiny_model_cfg, seed=0, device="cpu")
    assert model_device(model) == model_device(Ensemble([model])) == model_device(as_ensemble(model)) == torch.device("cpu")
    assert torch.equal(build_model(tiny_model_cfg, seed=0).embed.weight, model.embed.weight)  # same draw on every device
    key = RunKey(tmp_path, "sft", 0, (tiny_model_cfg,))
    assert key.stem != RunKey(tmp_path, "sft", 0, (tiny_model_cfg,), device="cuda").stem  # a GPU run never reads a CPU one
    with pytest.raises(ValueError, match=r"RunKey\.device must be 'cpu' or 'cuda'"):
        RunKey(tmp_path, "sft", 0, (), device="cuda:0")
    cached_model(key, lambda: build_model(tiny_model_cfg, 0), lambda model, checkpoint: None)
    assert key.path(".pt").exists()  # a CPU model is cached under the CPU key


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_every_chapter_entry_point_refuses_absent_cuda_before_writing(tmp_path, tiny_data_cfg, tiny_model_cfg):
    from dpo_toolkit.core.config import DPOConfig, EvalConfig, ModelConfig, RLTaskConfig, SmallSFTConfig, TrainConfig
    from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo
    from dpo_toolkit.studies.ches.mitigation import Variant
    from dpo_toolkit.studies.ches.safety import run_safety
    from dpo_toolkit.studies.ches.safety_task import SafetyConfig
    from dpo_toolkit.studies.likelihood_displacement.persona import PersonaConfig
    from dpo_toolkit.studies.likelihood_displacement.study import lm_study
    from dpo_toolkit.studies.vanishing_gradients.study import run_vanishing_gradients

    train = TrainConfig(epochs=1, batch_size=8)
    calls = {
        "run_sft_then_dpo": lambda d: run_sft_then_dpo(tiny_data_cfg, tiny_model_cfg, train, DPOConfig(epochs=1), EvalConfig(),
                                                       betas=[0.1], seeds=[0], cache_dir=d, device="cuda"),
        "run_vanishing_gradients": lambda d: run_vanishing_gradients(RLTaskConfig(), ModelConfig(), train, train,
                                                                     SmallSFTConfig(), train, [0], d, device="cuda"),
        "lm_study": lambda d: lm_study(PersonaConfig(), PersonaConfig().model_config(), train, train, 0.1, [0], 1, 0.1, "cuda"),
        "run_safety": lambda d: run_safety(SafetyConfig(), SafetyConfig().model_config(), train, DPOConfig(epochs=1),
                                           [Variant()], [0], d, device="cuda"),
    }  # fmt: skip
    for name, call in calls.items():
        folder = tmp_path / name
        with pytest.raises(ValueError, match="sees no CUDA device"):
            call(folder)
        assert not folder.exists(), f"{name} wrote before refusing the device"


def test_a_policy_and_a_reference_on_different_devices_are_refused_before_training(tiny_model_cfg, tiny_pairs, tiny_data_cfg):
    from dpo_toolkit.core.config import DPOConfig, EvalConfig
    from dpo_toolkit.core.dpo_train import train_dpo, train_dpo_ensemble
    from dpo_toolkit.core.ensemble import Ensemble
    from dpo_toolkit.core.evaluate import Evaluator
    from dpo_toolkit.core.model import build_model

    train, test = tiny_pairs
    reference = build_model(tiny_model_cfg, 0).requires_grad_(False)
    elsewhere = build_model(tiny_model_cfg, 0).to("meta")  # a second device that needs no hardware
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    with pytest.raises(ValueError, match="the policy is on meta but the reference on cpu"):
        train_dpo(elsewhere, reference, train, DPOConfig(epochs=1), evaluate=lambda m, betas: {})
    with pytest.raises(ValueError, match="the policy is on meta but the reference on cpu"):
        train_dpo_ensemble(Ensemble([elsewhere]), reference, train, [DPOConfig(epochs=1)], evaluate=lambda p, betas: [{}])
    with pytest.raises(ValueError, match="the policy is on meta but the reference on cpu"):
        Evaluator(test, tiny_data_cfg, EvalConfig(), reference=reference)(elsewhere, betas=0.1)
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
