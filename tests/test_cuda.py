"""The CUDA path against the CPU path on tiny models. Skipped where torch sees no CUDA device (CI);
run on a GPU machine (benchmarks/gpu_book.sh runs it first)."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_an_sft_then_dpo_run_on_cuda_matches_the_cpu_run(tmp_path, tiny_data_cfg, tiny_model_cfg):
    """Two seeds as members (References on the GPU: each seed's reference run once) give the CPU's numbers."""
    from dpo_toolkit.core.config import DPOConfig, EvalConfig, TrainConfig
    from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo

    def run(device):
        return run_sft_then_dpo(tiny_data_cfg, tiny_model_cfg, TrainConfig(epochs=2, batch_size=8), DPOConfig(epochs=1),
                                EvalConfig(kl_samples=2), betas=[0.1, 1.0], seeds=[0, 1], cache_dir=tmp_path / device,
                                device=device)  # fmt: skip

    cpu, cuda = run("cpu"), run("cuda")
    assert list(cpu.columns) == list(cuda.columns) and len(cpu) == len(cuda)
    for column in ("loss", "ood_rate", "seq_error", "accuracy", "margin", "weight_delta", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(cuda[column].to_numpy(float), cpu[column].to_numpy(float), rtol=1e-3, atol=1e-4,
                                   err_msg=column)  # fmt: skip
    dpo = cuda["phase"] == "dpo"
    assert cuda.loc[dpo, "kl"].notna().all() and cuda.loc[~dpo, "kl"].isna().all()  # KL from samples: same law, other draws


def test_exact_masses_and_greedy_answers_on_cuda_match_the_cpu(tiny_model_cfg):
    from dpo_toolkit.core.exact import response_masses
    from dpo_toolkit.core.generate import greedy_answers, sample_responses
    from dpo_toolkit.core.model import build_model

    cpu_model = build_model(tiny_model_cfg, seed=0, device="cpu")
    cuda_model = build_model(tiny_model_cfg, seed=0, device="cuda")
    prompts = np.arange(1, 12)
    assert greedy_answers(cuda_model, prompts) == greedy_answers(cpu_model, prompts)
    for cpu_mass, cuda_mass in zip(response_masses(cpu_model, prompts, 2), response_masses(cuda_model, prompts, 2), strict=True):
        np.testing.assert_allclose(cuda_mass, cpu_mass, rtol=1e-5, atol=1e-6)
    samples = sample_responses(cuda_model, prompts, n_samples=3, seed=0)
    assert samples.tokens.device.type == "cuda" and samples.tokens.shape[0] == 3 * len(prompts)
