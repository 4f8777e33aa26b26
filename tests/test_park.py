import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from dpo_toolkit.core import runner as runner_module
from dpo_toolkit.core.config import ConfigError, DPOConfig, EvalConfig, TrainConfig
from dpo_toolkit.core.metrics import weight_delta
from dpo_toolkit.core.model import load_model
from dpo_toolkit.recipes import sft_then_dpo as park_module
from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo, sft_recipe

SFT = TrainConfig(lr=1e-3, epochs=1, batch_size=32, n_evals=1)
DPO = DPOConfig(lr=1e-3, epochs=1, batch_size=32, n_evals=1)
EVAL = EvalConfig(kl_samples=2)


def _run(data_cfg, model_cfg, tmp_path, betas=(0.1, 0.5), seeds=(0,)):
    return run_sft_then_dpo(data_cfg, model_cfg, SFT, DPO, EVAL, betas=betas, seeds=seeds, cache_dir=tmp_path, progress=False)


def test_tidy_output(tiny_data_cfg, tiny_model_cfg, tmp_path):
    df = _run(tiny_data_cfg, tiny_model_cfg, tmp_path, seeds=[0, 1])
    assert set(df["phase"]) == {"sft", "dpo"}
    assert sorted(df.loc[df["phase"] == "dpo", "beta"].unique()) == [0.1, 0.5]
    assert df["beta"].isna().sum() == 2 * 2  # 2 SFT evaluations per seed
    assert len(df) == 2 * (2 + 2 * 2)  # per seed: 2 SFT rows, 2 evaluations × 2 β
    assert df["kl"].notna().sum() == 2 * 2 * 2
    assert df["seed"].nunique() == 2


def test_resume_reads_finished_runs_instead_of_training(tiny_data_cfg, tiny_model_cfg, tmp_path, monkeypatch):
    first = _run(tiny_data_cfg, tiny_model_cfg, tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("training ran although its result was cached")

    monkeypatch.setattr(park_module, "train_sft_ensemble", boom)
    monkeypatch.setattr(runner_module, "train_dpo_ensemble", boom)
    again = _run(tiny_data_cfg, tiny_model_cfg, tmp_path)
    assert again.equals(first)


@pytest.mark.parametrize(
    ("betas", "seeds", "message"),
    [
        ([0.1, -0.5], [0], "DPOConfig.beta must be a number in (0, 1000], got -0.5"),
        (-0.5, [0], "DPOConfig.beta"),
        ([], [0], "betas must name at least one"),
        ([0.1], [-1], "seeds must be"),
    ],
)
def test_bad_input_fails_before_any_training(tiny_data_cfg, tiny_model_cfg, tmp_path, monkeypatch, betas, seeds, message):
    monkeypatch.setattr(park_module, "train_sft_ensemble", lambda *a, **k: pytest.fail("trained before validating"))
    with pytest.raises(ValueError) as info:
        _run(tiny_data_cfg, tiny_model_cfg, tmp_path, betas=betas, seeds=seeds)
    assert message in str(info.value)
    assert isinstance(info.value, ConfigError) or "must" in str(info.value)


def test_kept_weights_are_saved_at_every_evaluation(tiny_data_cfg, tiny_model_cfg, tmp_path):
    df = run_sft_then_dpo(
        tiny_data_cfg, tiny_model_cfg, SFT, DPO, EVAL, betas=[0.1, 0.5], seeds=[0], cache_dir=tmp_path,
        progress=False, keep_betas=[0.5],
    )  # fmt: skip
    dpo = df[df["phase"] == "dpo"]
    kept, other = dpo[dpo["beta"] == 0.5], dpo[dpo["beta"] == 0.1]
    assert (other["weights"] == "").all() and len(kept) == 2
    reference = load_model(kept["weights"].iloc[0], tiny_model_cfg)  # step 0: the SFT reference
    final = load_model(kept["weights"].iloc[-1], tiny_model_cfg)
    assert kept["weight_delta"].iloc[0] == 0.0
    assert kept["weight_delta"].iloc[-1] == pytest.approx(weight_delta(final, reference), rel=1e-6)
    assert kept["attention_delta"].iloc[-1] == pytest.approx(weight_delta(final, reference, "attention"), rel=1e-6)


def test_unknown_keep_beta_fails_before_training(tiny_data_cfg, tiny_model_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(park_module, "train_sft_ensemble", lambda *a, **k: pytest.fail("trained before validating"))
    with pytest.raises(ValueError, match=r"keep_betas: 0\.3 is not one of the trained betas"):
        run_sft_then_dpo(
            tiny_data_cfg, tiny_model_cfg, SFT, DPO, EVAL, betas=[0.1, 0.5], seeds=[0], cache_dir=tmp_path, keep_betas=[0.3]
        )


SFT_SCRIPT = """
import sys
from dpo_toolkit.core.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.recipes.sft_then_dpo import sft_reference
sft_reference(DataConfig(prompt_min=1, prompt_max=30, window=2, test_fraction=0.3),
              ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=8),
              TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=30, batch_size=8, grad_clip=None, n_evals=30),
              EvalConfig(kl_samples=2), seed=0, cache_dir=sys.argv[1], progress=False)
"""


def _checkpoint_step(folder) -> int:
    """The step of the SFT checkpoint in folder, 0 when there is none yet (it is replaced atomically)."""
    found = list(folder.glob("*.ckpt")) if folder.exists() else []
    return torch.load(found[0])["step"] if found else 0


def test_sft_killed_midway_resumes_to_byte_identical_results(tmp_path):
    """A kill during SFT keeps the evaluations done so far (a checkpoint after each), and the
    rerun ends with the same weights and curve, byte for byte, as an unbroken run."""
    run = [sys.executable, "-c", SFT_SCRIPT]
    subprocess.run([*run, str(tmp_path / "a")], check=True, timeout=300)
    proc = subprocess.Popen([*run, str(tmp_path / "b")])
    deadline = time.time() + 120
    while time.time() < deadline and not _checkpoint_step(tmp_path / "b"):
        time.sleep(0.05)
    proc.kill()  # SIGKILL, after at least one evaluation past step 0
    proc.wait()
    assert not list((tmp_path / "b").glob("*.csv")), "SFT finished before it could be killed"
    assert _checkpoint_step(tmp_path / "b") > 0, "the kill came before any progress to keep"
    subprocess.run([*run, str(tmp_path / "b")], check=True, timeout=300)
    assert not list((tmp_path / "b").glob("*.ckpt")), "the checkpoint of a finished SFT run is removed"
    for a in (tmp_path / "a").iterdir():
        b = tmp_path / "b" / a.name
        if a.suffix == ".pt":  # torch.save's zip records differ in name only; compare the tensors bitwise
            assert all(torch.equal(x, y) for x, y in zip(torch.load(a).values(), torch.load(b).values(), strict=True))
        else:
            assert a.read_bytes() == b.read_bytes(), a.name


def test_sft_recipes_are_parks_two():
    kl = sft_recipe("kl_sweep", 10, lr=1e-3, batch_size=16)
    assert (kl.optimizer, kl.lr, kl.weight_decay, kl.batch_size, kl.grad_clip, kl.n_evals) == ("adam", 1e-3, 0.0, 16, None, 10)
    grok = sft_recipe("grokking", 100, lr=1e-3, batch_size=16)  # lr and batch size do not apply to §4.1's recipe
    assert (grok.optimizer, grok.lr, grok.weight_decay, grok.batch_size, grok.grad_clip, grok.n_evals) == (
        "adamw",
        1e-4,
        0.01,
        512,
        5.0,
        10,
    )
    assert sft_recipe("grokking", 3).n_evals == 3
    with pytest.raises(ValueError, match="kl_sweep"):
        sft_recipe("dpo", 10)


def test_replicates_as_members_equal_one_run_per_seed(tiny_data_cfg, tiny_model_cfg, tmp_path):
    """Seeds [0, 1] trained as members of one SFT ensemble and one DPO ensemble (each member against
    its own seed's reference, with its own seed's batch order) give what each seed gives alone, to
    float tolerance: every curve of SFT and DPO, KL and WeightDelta included."""
    together = _run(tiny_data_cfg, tiny_model_cfg, tmp_path / "together", seeds=[0, 1])
    alone = pd.concat([_run(tiny_data_cfg, tiny_model_cfg, tmp_path / f"alone{s}", seeds=[s]) for s in (0, 1)])
    assert list(together["seed"]) == list(alone["seed"]) and list(together["phase"]) == list(alone["phase"])
    noise_decided = ["rewards/accuracies", "accuracy"]  # float noise decides the ties at step 0
    numbers = together.drop(columns=["weights", *noise_decided]).select_dtypes("number").columns
    pd.testing.assert_frame_equal(
        together[numbers].reset_index(drop=True), alone[numbers].reset_index(drop=True), rtol=1e-4, atol=1e-5
    )
    differ = together[(together["phase"] == "dpo") & (together["step"] > 0)].groupby("seed")["loss"].mean()
    assert differ[0] != differ[1]  # the replicates did differ


def test_sft_references_share_the_cache_of_each_seed(tiny_data_cfg, tiny_model_cfg, tmp_path, monkeypatch):
    """A seed trained as a member of a group is cached as its own run: asking for it alone loads
    it, and a group with one new seed trains that seed only."""
    from dpo_toolkit.recipes.sft_then_dpo import sft_reference, sft_references

    group = sft_references(tiny_data_cfg, tiny_model_cfg, SFT, EVAL, [0, 1], tmp_path, progress=False)
    trained = []
    real = park_module.train_sft_ensemble
    monkeypatch.setattr(
        park_module, "train_sft_ensemble", lambda policies, *a, **k: trained.append(len(policies)) or real(policies, *a, **k)
    )
    model, curve = sft_reference(tiny_data_cfg, tiny_model_cfg, SFT, EVAL, 1, tmp_path, progress=False)
    assert trained == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), group[1][0].parameters(), strict=True))
    assert curve.equals(group[1][1])
    sft_references(tiny_data_cfg, tiny_model_cfg, SFT, EVAL, [1, 2, 0], tmp_path, progress=False)
    assert trained == [1]
