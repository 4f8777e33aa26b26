import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from dpo_toolkit.core.config import ModelConfig, RLTaskConfig, SmallSFTConfig, TrainConfig
from dpo_toolkit.studies.vanishing_gradients import study as vanishing
from dpo_toolkit.studies.vanishing_gradients.claims import envelope, envelope_slope, stall_table, vanishing_claims
from dpo_toolkit.studies.vanishing_gradients.study import ARMS, run_vanishing_gradients, small_sft_config

CFG = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=10, batch_size=16, grad_clip=None, n_evals=10)


def test_small_sft_takes_the_stated_share_of_steps():
    small = small_sft_config(CFG, n_train=200, n_small=2, fix=SmallSFTConfig(label_fraction=0.01, step_fraction=0.4))
    full_steps = 10 * 13  # ceil(200 / 16) steps per epoch
    assert small.batch_size == 2 and small.epochs == round(0.4 * full_steps) and small.n_evals == 10
    bigger = small_sft_config(CFG, n_train=200, n_small=40, fix=SmallSFTConfig(label_fraction=0.2, step_fraction=0.4))
    assert bigger.batch_size == 16 and bigger.epochs * 3 == pytest.approx(0.4 * full_steps, abs=2)


SEEDS = (0, 1, 2)
JITTER = (-0.01, 0.0, 0.01)  # per seed: three replicates that differ a little, as trained seeds do


def _inputs(std_small_gain: float, seeds=SEEDS, transfer: tuple[float, float] = (0.0, 0.0)) -> pd.DataFrame:
    """Per seed, two arms × 4 training prompts at steps 0 and 10; prompts 0–1 start small-std,
    2–3 larger-std, all low-reward. The small-std ones gain std_small_gain + JITTER[seed], the
    others 0.4; and 4 held-out prompts (4–5 small-std, 6–7 larger) that gain `transfer`, so that
    the own gains (trained − held out) are std_small_gain + JITTER − transfer[0] and 0.4 − transfer[1]."""
    rows = []
    for seed in seeds:
        for arm in ("no SFT", "small SFT"):
            for prompt, std in zip(range(8), [0.01, 0.02, 0.2, 0.3] * 2, strict=True):
                split = "train" if prompt < 4 else "test"
                if split == "train":
                    gain = std_small_gain + JITTER[seed] if std < 0.05 else 0.4
                else:
                    gain = transfer[0] if std < 0.05 else transfer[1]
                for step, value in ((0, 0.4), (10, 0.4 + gain)):
                    grad = (3 * std**2 if step == 0 else 0.1 * std) if split == "train" else np.nan
                    rows.append({"arm": arm, "seed": seed, "prompt": prompt, "split": split, "hard": True, "step": step,
                                 "value": value, "std": std, "grad_norm": grad, "gamma_low": 10.0 if split == "train"
                                 else np.nan, "gamma": np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _curves(small_reward: float, seeds=SEEDS) -> pd.DataFrame:
    """Per seed: final training reward 0.7 (no SFT), 1.0 (full SFT), small_reward + JITTER[seed] (small SFT)."""
    final = {"no SFT": 0.7, "full SFT": 1.0, "small SFT": small_reward}
    return pd.DataFrame(
        [{"arm": a, "seed": seed, "step": s, "reward_train": final[a] + (JITTER[seed] if a == "small SFT" else 0) if s else 0.5,
          "small_std_low_reward": 3 if s == 0 else 1}
         for seed in seeds for a in ARMS for s in (0, 10)]
    )  # fmt: skip


def test_stall_table_by_hand():
    table = stall_table(_inputs(0.01, seeds=(1,)))  # the training prompts
    assert len(table) == 8
    assert table.loc[table["prompt"] == 0, "gain"].tolist() == pytest.approx([0.01, 0.01])
    assert table["small_low"].tolist() == [True, True, False, False] * 2


@pytest.mark.parametrize(
    ("small_gain", "small_reward", "expected"),
    [
        # C15: per-seed ratios 0, 0.025, 0.05 (≤ 0.25); C16: the small SFT closes (0.25 ± 0.01) / 0.3 ≈ 0.83 of the gap (≥ 0.5)
        (0.01, 0.95, ["reproduced", "reproduced"]),
        # ratios 0.35, 0.375, 0.4: above 0.25, below 0.5; closes 0.1 / 0.3 ≈ 0.33 of the gap: > 0, < 0.5
        (0.15, 0.8, ["partly", "partly"]),
        # ratios 0.975–1.025; the small SFT ends below no SFT: it closes −0.1 / 0.3 of the gap
        (0.4, 0.6, ["not reproduced"] * 2),
    ],
)
def test_claim_verdicts(small_gain, small_reward, expected):
    claims = vanishing_claims(_curves(small_reward), _inputs(small_gain)).set_index("claim_id")
    assert claims.loc[["C15", "C16"], "verdict"].tolist() == expected
    assert claims.loc[["C15", "C16"], "n"].tolist() == ["3", "3"]
    assert float(claims.loc["C15", "estimate"]) == pytest.approx(small_gain / 0.4, abs=1e-3)  # ratio of the mean own gains


def test_c15_interval_is_the_student_t_interval_of_the_per_seed_ratios():
    claims = vanishing_claims(_curves(0.95), _inputs(0.05)).set_index("claim_id")  # ratios 0.1, 0.125, 0.15
    half = stats.t.ppf(0.975, 2) * 0.025 / np.sqrt(3)  # sd of the three ratios 0.025: half-width 0.062
    assert float(claims.loc["C15", "ci_low"]) == pytest.approx(0.125 - half, abs=1e-3)
    assert float(claims.loc["C15", "ci_high"]) == pytest.approx(0.125 + half, abs=1e-3)
    assert claims.loc["C15", "verdict"] == "reproduced" and claims.loc["C15", "threshold"] == "0.25"


def test_c15_and_c16_straddling_or_on_two_seeds_are_inconclusive():
    jitter = (-0.1, 0.0, 0.1)  # ratios 0.25 ± 0.25: the interval straddles 0.25 (and 0.5)
    inputs = _inputs(0.1)
    trained_small = (inputs["std"] < 0.05) & (inputs["step"] == 10) & (inputs["split"] == "train")
    inputs.loc[trained_small, "value"] = 0.5 + inputs["seed"].map(dict(enumerate(jitter)))
    curves = _curves(0.85)  # closes (0.15 ± 0.01) / 0.3 = 0.5 ± 0.033 of the gap: straddles 0.5
    claims = vanishing_claims(curves, inputs).set_index("claim_id")
    assert claims.loc["C15", "verdict"] == "inconclusive"
    assert claims.loc["C16", "verdict"] == "inconclusive"
    two = vanishing_claims(_curves(0.95, seeds=(0, 1)), _inputs(0.01, seeds=(0, 1))).set_index("claim_id")
    assert two["verdict"].tolist() == ["untestable here"] + ["inconclusive"] * 2  # however clear: two seeds decide nothing
    assert "fewer than 3 replicates" in two.loc["C16", "our_value"]


def test_envelope_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    std = 10 ** rng.uniform(-4, 0, 2000)
    inputs = pd.DataFrame({"std": std, "grad_norm": 2 * std ** (2 / 3) * rng.uniform(0.5, 1, 2000)})
    env = envelope(inputs)
    slope = np.polyfit(env["log10_std"], env["log10_grad"], 1)[0]
    assert slope == pytest.approx(2 / 3, abs=0.05)
    assert (env["n"] >= 5).all()


def test_end_to_end_on_a_tiny_task_is_cached_and_deterministic(tmp_path, monkeypatch):
    task = RLTaskConfig(prompt_min=100, prompt_max=115, test_fraction=0.5, hard_fraction=0.5, shift=30, seed=0)
    model_cfg = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6)
    short = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=None, n_evals=2)
    args = (task, model_cfg, short, short, SmallSFTConfig(label_fraction=0.2, step_fraction=0.5), short)
    curves, inputs = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path, progress=False)
    assert set(curves["arm"]) == set(ARMS) and len(curves) == 3 * 3  # evaluations at steps 0, 1, 2
    assert len(inputs) == 3 * 3 * 16 and inputs.loc[inputs["split"] == "test", "grad_norm"].isna().all()
    assert (inputs.loc[inputs["split"] == "train", "grad_norm"] > 0).all()
    fresh_curves, fresh_inputs = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path / "fresh", progress=False)
    pd.testing.assert_frame_equal(fresh_inputs, inputs)  # same seed, same numbers
    pd.testing.assert_frame_equal(fresh_curves, curves)
    monkeypatch.setattr(vanishing, "train_rft", lambda *a, **k: pytest.fail("retrained a cached run"))
    again_curves, again_inputs = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again_inputs, inputs)
    pd.testing.assert_frame_equal(again_curves, curves)


def test_a_killed_rft_run_resumes_with_the_numbers_of_an_unbroken_one(tmp_path, monkeypatch):
    task = RLTaskConfig(prompt_min=100, prompt_max=115, test_fraction=0.5, hard_fraction=0.5, shift=30, seed=0)
    model_cfg = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6)
    short = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=4, grad_clip=None, n_evals=4)
    args = (task, model_cfg, short, short, SmallSFTConfig(label_fraction=0.2, step_fraction=0.5), short)
    unbroken = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path / "a", progress=False)
    calls, probe_call = [], vanishing.Probe.__call__

    def dies_at_the_third_evaluation(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return probe_call(self)

    monkeypatch.setattr(vanishing.Probe, "__call__", dies_at_the_third_evaluation)
    with pytest.raises(KeyboardInterrupt):
        run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path / "b", progress=False)
    assert list((tmp_path / "b").glob("rft-*.ckpt")) and list((tmp_path / "b").glob("*.partial.csv"))
    monkeypatch.setattr(vanishing.Probe, "__call__", probe_call)
    resumed = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(resumed[0], unbroken[0])
    pd.testing.assert_frame_equal(resumed[1], unbroken[1])
    assert not list((tmp_path / "b").glob("rft-*.ckpt")) and not list((tmp_path / "b").glob("*.partial.csv"))


def test_two_chapters_asking_for_one_rft_run_train_it_once(tmp_path, monkeypatch):
    """The RFT run's files sit in the shared run cache: a second caller waits for the first, then reads them."""
    import threading
    import time

    task = RLTaskConfig(prompt_min=100, prompt_max=115, test_fraction=0.5, hard_fraction=0.5, shift=30, seed=0)
    model_cfg = ModelConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=6)
    short = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, epochs=2, batch_size=8, grad_clip=None, n_evals=2)
    args = (task, model_cfg, short, short, SmallSFTConfig(label_fraction=0.2, step_fraction=0.5), short)
    trained, train_rft = [], vanishing.train_rft

    def slow_train_rft(*a, **k):
        trained.append(1)
        time.sleep(1.0)  # long enough for the other caller to arrive while this run is unfinished
        return train_rft(*a, **k)

    monkeypatch.setattr(vanishing, "train_rft", slow_train_rft)
    results = [None, None]

    def run(i: int) -> None:
        results[i] = run_vanishing_gradients(*args, seeds=[0], cache_dir=tmp_path, progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert trained == [1]
    pd.testing.assert_frame_equal(results[0][0], results[1][0])
    pd.testing.assert_frame_equal(results[0][1], results[1][1])


def test_bad_seeds_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        run_vanishing_gradients(RLTaskConfig(), ModelConfig(), CFG, CFG, SmallSFTConfig(), CFG, seeds=[], cache_dir=tmp_path)


def test_c15_reads_gains_net_of_transfer():
    # trained small-std inputs gain 0.3, larger 0.4 (ratio 0.75: not a stall); held-out ones gain 0.28 and 0.1 by
    # transfer alone, so the own gains are 0.02 ± 0.01 and 0.3: a ratio of 0.067, a stall of their own gradient
    claims = vanishing_claims(_curves(0.95), _inputs(0.3, transfer=(0.28, 0.1))).set_index("claim_id")
    assert claims.loc["C15", "verdict"] == "reproduced"
    assert float(claims.loc["C15", "estimate"]) == pytest.approx(0.02 / 0.3, abs=1e-3)
    assert "held-out inputs of each kind, never trained on, gain 0.280 and 0.100" in claims.loc["C15", "our_value"]
    # the same training gains with no transfer: the small-std inputs gain 0.75 of the others' by their own gradient
    assert vanishing_claims(_curves(0.95), _inputs(0.3)).set_index("claim_id").loc["C15", "verdict"] == "not reproduced"


def test_c15_is_untestable_without_small_std_low_reward_inputs():
    inputs = _inputs(0.01)
    inputs.loc[inputs["std"] < 0.05, "std"] = 0.1  # no input starts with a small std (the old rule said not reproduced)
    claims = vanishing_claims(_curves(0.95), inputs).set_index("claim_id")
    assert claims.loc["C15", "verdict"] == "untestable here"
    assert "0 and 24" in claims.loc["C15", "precondition"] and "0 of 3 seeds" in claims.loc["C15", "precondition"]


def _bound_inputs(exponent: float, lows=(-4, -4, -4)) -> pd.DataFrame:
    """Per seed i, 600 (input, checkpoint) cases with std log-uniform on [10^lows[i], 1] and
    ‖∇V_x‖ = 2 · std^exponent · U(0.5, 1)."""
    frames = []
    for seed, low in enumerate(lows):
        rng = np.random.default_rng(seed)
        std = 10 ** rng.uniform(low, 0, 600)
        frames.append(pd.DataFrame({"arm": "no SFT", "seed": seed, "prompt": np.arange(600) % 30, "split": "train",
                                    "hard": True, "step": np.arange(600) // 30, "value": 0.5, "std": std,
                                    "grad_norm": 2 * std**exponent * rng.uniform(0.5, 1, 600), "gamma_low": 10.0,
                                    "gamma": np.nan}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("exponent", [2 / 3, 0.2, 2.0])
def test_c14_describes_the_envelope_slope_and_never_decides_on_it(exponent):
    inputs = _bound_inputs(exponent)
    c14 = vanishing_claims(_curves(0.95), inputs).set_index("claim_id").loc["C14"]
    assert c14["verdict"] == "untestable here" and c14["n"] == ""  # the constant is not confirmed: no interval decides
    per_seed = [np.polyfit(e["log10_std"], e["log10_grad"], 1)[0] for e in (envelope(g) for _, g in inputs.groupby("seed"))]
    assert f"log-log slope {np.mean(per_seed):.2f} ± {np.std(per_seed, ddof=1):.2f}" in c14["our_value"]
    # the bound as read (γ from below 10, L = 2): ‖∇V‖ / (120 · std^(2/3)), largest over the 1,800 cases
    ratio = (inputs["grad_norm"] / (120 * inputs["std"] ** (2 / 3))).max()
    assert f"largest ratio ‖∇V_x‖ / bound {ratio:.3g} over 1800" in c14["our_value"]


def test_c15_is_untestable_when_the_larger_std_inputs_do_not_improve():
    """A negative gain of the others made the ratio negative, which the old rule read as stalling (reproduced)."""
    inputs = _inputs(0.3)
    larger = (inputs["std"] >= 0.05) & (inputs["step"] == 10) & (inputs["split"] == "train")
    inputs.loc[larger, "value"] = 0.3  # the larger-std training inputs lose 0.1 (the held-out ones stay)
    claims = vanishing_claims(_curves(0.95), inputs).set_index("claim_id")
    assert claims.loc["C15", "verdict"] == "untestable here"  # every seed's larger-std inputs lose 0.1
    assert "-0.100" in claims.loc["C15", "precondition"]
    assert "own gain of larger-std low-reward inputs" in claims.loc["C15", "our_value"]


def test_c15_is_inconclusive_when_only_some_seeds_lack_a_ratio():
    """Whether a seed has small-std inputs moves with the float order: one seed without a ratio
    opens the interval (inconclusive) instead of deciding 'untestable here'."""
    inputs = _inputs(0.01)
    inputs.loc[(inputs["seed"] == 0) & (inputs["std"] < 0.05), "std"] = 0.1
    claims = vanishing_claims(_curves(0.95), inputs).set_index("claim_id")
    assert claims.loc["C15", "verdict"] == "inconclusive"


def test_c16_is_untestable_where_no_sft_does_not_stall():
    curves = _curves(0.95)
    curves.loc[(curves["arm"] == "no SFT") & (curves["step"] > 0), "reward_train"] = 1.0  # no gap to close
    c16 = vanishing_claims(curves, _inputs(0.01)).set_index("claim_id").loc["C16"]
    assert c16["verdict"] == "untestable here" and "gap 0.000 ± 0.000" in c16["precondition"]


def _softmax_policy_inputs(best_reward: float, seeds=SEEDS) -> pd.DataFrame:
    """RL fine-tuning cases of one-token softmax policies whose logits are the parameters θ (so the
    logit Jacobian is the identity and γ = 1), turning deterministic on an answer of reward
    best_reward (1: the right answer; 0.4: a wrong one) as their logit margin t grows. V, std and
    ‖∇V_x‖ are exact (autograd); one row per (seed, prompt, t)."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for prompt in range(6):
            rewards = torch.tensor(np.r_[best_reward, rng.uniform(0, 0.3, 11)])
            noise = torch.tensor(rng.normal(0, 0.5, 12))
            for step, t in enumerate(np.linspace(0, 14, 15)):
                theta = (noise + t * torch.eye(12, dtype=torch.float64)[0]).requires_grad_(True)
                probs = theta.softmax(-1)
                value = (probs * rewards).sum()
                (grad,) = torch.autograd.grad(value, theta)
                std = float((probs * (rewards - value) ** 2).sum().sqrt().detach())
                rows.append({"arm": "no SFT", "seed": seed, "prompt": prompt, "split": "train", "hard": True,
                             "step": step, "value": float(value), "std": std, "grad_norm": float(grad.norm()),
                             "gamma_low": 1.0, "gamma": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_c14_does_not_pass_on_a_policy_that_merely_turns_deterministic():
    inputs = _softmax_policy_inputs(best_reward=1.0)
    train = inputs[inputs["split"] == "train"]
    # the old constant-free rule (slope ≥ 2/3 − 0.1 over ≥ 2 decades of std) passed it: the slope is the softmax's 2
    for _, seed_rows in train.groupby("seed"):
        slope, decades = envelope_slope(seed_rows)
        assert slope == pytest.approx(2.0, abs=0.3) and decades >= 2.0
    c14 = vanishing_claims(_curves(0.95), inputs, constant_confirmed=True).set_index("claim_id").loc["C14"]
    assert c14["verdict"] == "untestable here"  # no small-std case at low reward: not the theorem's regime
    assert "0 of 3 seeds" in c14["precondition"] and "against 2 for any softmax policy" in c14["our_value"]


def test_c14_tests_the_bound_with_its_constant_in_the_theorems_regime():
    wrong = _softmax_policy_inputs(best_reward=0.4)  # confidently wrong: V → 0.4 while std → 0
    claims = vanishing_claims(_curves(0.95), wrong, constant_confirmed=True).set_index("claim_id")
    assert claims.loc["C14", "verdict"] == "reproduced"  # one token: ‖∇V‖ ≤ γ·std ≤ 12·γ·std^(2/3)
    broken = wrong.assign(gamma=1e-3)  # a planted γ too small for the gradients: the exact ratio exceeds 1
    assert vanishing_claims(_curves(0.95), broken, constant_confirmed=True).loc[0, "verdict"] == "not reproduced"
    unknown = wrong.assign(gamma=np.nan, gamma_low=1e-3)  # only a bound from below, and it exceeds 1: undecided
    assert vanishing_claims(_curves(0.95), unknown, constant_confirmed=True).loc[0, "verdict"] == "inconclusive"
    # the constant as read here is not confirmed against the paper's text: untestable by default
    assert vanishing_claims(_curves(0.95), wrong).loc[0, "verdict"] == "untestable here"
