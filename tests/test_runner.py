"""The experiment runner: members with their own hyperparameters equal separate runs, results
are cached by everything they depend on, and a killed run resumes with an unbroken run's numbers."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_toolkit.core import runner as runner_module
from dpo_toolkit.core.config import DPOConfig, EvalConfig, TrainConfig
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.runner import Member, RunKey, array_hash, cached_frames, cached_model, run_dpo
from dpo_toolkit.core.train import train_sft

DPO = DPOConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=1.0, n_evals=2, beta=0.1)


@pytest.fixture
def reference(tiny_model_cfg, tiny_pairs):
    model = build_model(tiny_model_cfg, seed=0)
    train_sft(model, tiny_pairs[0], TrainConfig(lr=1e-2, epochs=2, batch_size=16, n_evals=1), lambda m: {}, progress=False)
    return model.requires_grad_(False)


def _dying(evaluate, at_call: int):
    """evaluate, except that its at_call-th call raises KeyboardInterrupt (a run killed there)."""
    calls = []

    def dies(policies, betas):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return evaluate(policies, betas)

    return dies


def _evaluator(tiny_pairs, tiny_data_cfg, reference):
    return Evaluator(tiny_pairs[1], tiny_data_cfg, EvalConfig(kl_samples=2), reference=reference)


def test_members_with_their_own_beta_lr_weight_decay_and_sft_weight_equal_separate_runs(
    reference, tiny_pairs, tiny_data_cfg, tmp_path
):
    members = [
        Member(DPO),
        Member(DPOConfig(**{**DPO.__dict__, "beta": 0.5, "lr": 3e-3, "weight_decay": 0.1})),
        Member(DPOConfig(**{**DPO.__dict__, "lr": 3e-4}), sft_weight=0.5),
    ]
    n_pairs = len(tiny_pairs[0])
    weights = torch.stack([torch.ones(n_pairs), torch.ones(n_pairs), (torch.arange(n_pairs) % 2).float()])  # (members, pairs)
    key = RunKey(tmp_path, "together", 0, (tiny_data_cfg,))
    together = run_dpo(key, reference, tiny_pairs[0], members, _evaluator(tiny_pairs, tiny_data_cfg, reference), weights)
    for i, member in enumerate(members):
        alone_key = RunKey(tmp_path, f"alone{i}", 0, (tiny_data_cfg,))
        evaluate = _evaluator(tiny_pairs, tiny_data_cfg, reference)
        alone = run_dpo(alone_key, reference, tiny_pairs[0], [member], evaluate, weights[i : i + 1])
        mine = together[together["member"] == i].drop(columns="member").reset_index(drop=True)
        strict = ["member", "rewards/accuracies"]  # TRL's strict accuracy: float noise decides the ties at step 0
        pd.testing.assert_frame_equal(mine.drop(columns=strict[1:]), alone.drop(columns=strict), rtol=1e-4, atol=1e-5)
    assert together.groupby("member")["loss"].last().nunique() == 3  # the members did train differently


def test_a_second_call_reads_the_cache_and_a_changed_member_does_not(reference, tiny_pairs, tiny_data_cfg, tmp_path, monkeypatch):
    key = RunKey(tmp_path, "dpo", 0, (tiny_data_cfg,))
    evaluate = _evaluator(tiny_pairs, tiny_data_cfg, reference)
    first = run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], evaluate, keep=[0])
    assert first["weights"].str.endswith(".pt").all()
    calls = []
    monkeypatch.setattr(runner_module, "train_dpo_ensemble", lambda *a, **k: calls.append(1) or first.drop(columns="weights"))
    again = run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], evaluate, keep=[0])
    pd.testing.assert_frame_equal(again, first)
    assert calls == []
    run_dpo(key, reference, tiny_pairs[0], [Member(DPO, sft_weight=0.1)], evaluate)
    assert calls == [1]  # another member is another result


def test_a_killed_run_resumes_with_the_numbers_of_an_unbroken_one(reference, tiny_pairs, tiny_data_cfg, tmp_path):
    members = [Member(DPO), Member(DPOConfig(**{**DPO.__dict__, "lr": 3e-3}))]
    evaluate = _evaluator(tiny_pairs, tiny_data_cfg, reference)
    unbroken = run_dpo(RunKey(tmp_path / "a", "dpo", 0), reference, tiny_pairs[0], members, evaluate)
    dies_at_the_second_evaluation = _dying(evaluate, at_call=2)
    key = RunKey(tmp_path / "b", "dpo", 0)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(key, reference, tiny_pairs[0], members, dies_at_the_second_evaluation)
    assert list((tmp_path / "b").glob("*.ckpt")) and not list((tmp_path / "b").glob("*.csv"))
    resumed = run_dpo(key, reference, tiny_pairs[0], members, evaluate)
    pd.testing.assert_frame_equal(resumed, unbroken)
    assert not list((tmp_path / "b").glob("*.ckpt"))


def test_cached_model_trains_once_and_removes_its_checkpoint(tiny_model_cfg, tmp_path):
    fits = []

    def fit(model, checkpoint):
        fits.append(checkpoint.path)
        checkpoint.path.write_text("progress")
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return pd.DataFrame({"step": [0, 1]})

    key = RunKey(tmp_path, "sft", 3, (tiny_model_cfg,))
    first, curve = cached_model(key, lambda: build_model(tiny_model_cfg, 3), fit)
    second, again = cached_model(key, lambda: build_model(tiny_model_cfg, 3), fit)
    assert len(fits) == 1 and not fits[0].exists()
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters(), strict=True))
    assert not torch.equal(next(first.parameters()), next(build_model(tiny_model_cfg, 3).parameters()))
    pd.testing.assert_frame_equal(curve, again)
    assert not any(p.requires_grad for p in second.parameters())


def test_cached_frames_computes_once_resumes_and_cleans_up(tmp_path):
    key = RunKey(tmp_path, "tables", 2)
    calls = []

    def compute(checkpoint):
        calls.append(checkpoint.path)
        checkpoint.path.write_text("progress")
        key.path("-partial.csv").write_text("rows so far")
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed before its tables were written
        return pd.DataFrame({"step": [0, 1], "x": [0.1, 1 / 3]}), pd.DataFrame({"arm": ["a"], "ok": [True]})

    with pytest.raises(KeyboardInterrupt):
        cached_frames(key, ("-one.csv", "-two.csv"), compute, scratch=("-partial.csv",))
    assert key.path(".ckpt").exists() and not list(tmp_path.glob("*-one.csv"))  # a killed run never looks finished
    one, two = cached_frames(key, ("-one.csv", "-two.csv"), compute, scratch=("-partial.csv",))
    assert calls == [key.path(".ckpt")] * 2 and not key.path(".ckpt").exists() and not key.path("-partial.csv").exists()
    pd.testing.assert_frame_equal(one, pd.read_csv(key.path("-one.csv")))  # as stored, on the first call too
    assert one["x"].tolist() == [0.1, 1 / 3] and two["ok"].tolist() == [True]
    again = cached_frames(key, ("-one.csv", "-two.csv"), lambda checkpoint: pytest.fail("recomputed a stored run"))
    pd.testing.assert_frame_equal(again[0], one)
    pd.testing.assert_frame_equal(again[1], two)


def test_run_keys_hash_what_the_result_depends_on(tiny_data_cfg, tiny_model_cfg, tmp_path):
    base = RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, tiny_model_cfg))
    assert base.stem == RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, copy.deepcopy(tiny_model_cfg))).stem
    assert base.stem != RunKey(tmp_path, "dpo", 1, (tiny_data_cfg, tiny_model_cfg)).stem
    assert base.stem != RunKey(tmp_path, "dpo", 0, (tiny_data_cfg,)).stem
    mask = np.array([1.0, 0.0, 0.0])
    with_mask = RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, tiny_model_cfg, mask)).stem
    assert with_mask != base.stem
    assert with_mask != RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, tiny_model_cfg, mask[::-1].copy())).stem
    assert array_hash(mask) == array_hash(torch.tensor(mask))
    assert array_hash(mask) != array_hash(mask.astype(np.float32))
    with pytest.raises(ValueError, match="seeds must be integers ≥ 0"):
        RunKey(tmp_path, "dpo", -1)


def test_members_validate_themselves():
    with pytest.raises(TypeError, match="DPOConfig"):
        Member(TrainConfig())
    with pytest.raises(ValueError, match="sft_weight"):
        Member(DPO, sft_weight=-1.0)
    with pytest.raises(ValueError, match="at least one Member"):
        run_dpo(RunKey("unused", "x", 0), None, None, [], None)


def test_a_run_killed_without_kept_weights_resumes_with_every_kept_step(reference, tiny_pairs, tiny_data_cfg, tmp_path):
    evaluate = _evaluator(tiny_pairs, tiny_data_cfg, reference)
    dies_at_the_second_evaluation = _dying(evaluate, at_call=2)
    key = RunKey(tmp_path, "dpo", 0)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], dies_at_the_second_evaluation)  # keeps no weights
    df = run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], evaluate, keep=[0])
    assert all(Path(w).exists() for w in df["weights"])  # step 0 too: not resumed from a checkpoint that kept none
    assert not list(tmp_path.glob("*-keep0.ckpt"))  # the finished run removed its own checkpoint


def test_a_checkpoint_left_beside_a_finished_curve_is_removed(reference, tiny_pairs, tiny_data_cfg, tmp_path):
    key = RunKey(tmp_path, "dpo", 0)
    evaluate = _evaluator(tiny_pairs, tiny_data_cfg, reference)
    first = run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], evaluate)
    (curve,) = tmp_path.glob("*.csv")
    curve.with_suffix(".ckpt").write_text("killed after the curve was written")
    pd.testing.assert_frame_equal(run_dpo(key, reference, tiny_pairs[0], [Member(DPO)], evaluate), first)
    assert not list(tmp_path.glob("*.ckpt"))


def _train_slowly_once(directory: str, log: str, start: float) -> list[float]:
    """In a child process: cached_model on one key, whose fit logs itself and takes 1 s; returns the first weights."""
    import time

    from dpo_toolkit.core.config import ModelConfig

    cfg = ModelConfig(d_model=8, n_heads=2, d_mlp=8)

    def fit(model, checkpoint):
        with open(log, "a") as f:
            f.write("fit\n")
        time.sleep(1.0)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return pd.DataFrame({"step": [0]})

    time.sleep(max(0.0, start - time.time()))  # both processes ask at the same moment
    model, _ = cached_model(RunKey(Path(directory), "sft", 0, (cfg,)), lambda: build_model(cfg, 0), fit)
    return next(model.parameters()).flatten()[:4].tolist()


def test_two_processes_asking_for_one_run_train_it_once(tmp_path):
    """Chapters share one run cache (claims.run_cache) and run two at a time: the second waits and loads."""
    import multiprocessing
    import time

    log = tmp_path / "fits.log"
    start = time.time() + 3.0  # after both children have imported torch
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_train_slowly_once, [(str(tmp_path / "runs"), str(log), start)] * 2)
    assert log.read_text() == "fit\n"
    assert results[0] == results[1]


def test_the_run_cache_is_one_folder_under_the_results_root(tmp_path, monkeypatch):
    from dpo_toolkit.core.claims import results_dir, run_cache

    assert run_cache(tmp_path) == tmp_path / "runs" and (tmp_path / "runs").is_dir()
    monkeypatch.setenv("DPO_RESULTS_ROOT", str(tmp_path / "elsewhere"))
    assert run_cache() == tmp_path / "elsewhere" / "runs"
    assert results_dir("kl_sweep").parent == run_cache().parent  # beside every chapter's own results


def test_a_run_key_hashes_arrays_by_their_bytes_and_refuses_other_parts(tmp_path, tiny_data_cfg):
    weights = torch.ones(3)
    key = RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, weights))
    assert key.stem == RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, torch.ones(3))).stem
    assert key.stem != RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, torch.zeros(3))).stem
    with pytest.raises(TypeError, match="dataclass instances and arrays only, got str"):
        RunKey(tmp_path, "dpo", 0, (tiny_data_cfg, "0123456789ab"))  # a string is not an array's hash


def test_each_member_starts_from_its_own_reference_when_there_is_one_per_member(tiny_model_cfg):
    from dpo_toolkit.core.ensemble import Ensemble
    from dpo_toolkit.core.model import build_model
    from dpo_toolkit.core.runner import starting_points

    references = [build_model(tiny_model_cfg, seed=s) for s in (0, 1)]
    starts = starting_points(Ensemble(references), 2)
    for start, reference in zip(starts, references, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(start.parameters(), reference.parameters(), strict=True))
    assert all(
        torch.equal(p, q)
        for s in starting_points(references[1], 2)
        for p, q in zip(s.parameters(), references[1].parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="2 references for 3 members"):
        starting_points(Ensemble(references), 3)
