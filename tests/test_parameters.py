"""Every notebook parameter is checked before any work: a bad value stops the notebook in
its first code cell after `parameters`, names the parameter, and writes nothing.

The table BAD holds at least one bad value for every parameter of every notebook; a
parameter missing from it fails ``test_every_parameter_has_bad_values``, so a new
parameter cannot slip through unchecked. Values are injected exactly as papermill
injects them (``papermill.parameterize.parameterize_notebook``); the cells up to the
first one after `parameters` then run in-process, which takes milliseconds rather than
a kernel start per value. ``test_papermill_stops_a_bad_value`` runs the papermill command
itself once per notebook.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
import pytest
import torch
import yaml
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from dpo_toolkit.core.parameters import ParameterError, Spec, largest_prompt, real

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAN = float("nan")
MODULES = (
    "grokking",
    "kl_sweep",
    "drift_map",
    "surgery",
    "mixture_tpm",
    "vanishing_gradients",
    "likelihood_displacement",
    "ches",
)
ANY = {"results_root"}  # parameters that take any value of their type (a folder)

NUMBER_LINE = {
    "prompt_min": [-1, 1.5],
    "prompt_max": [0, 99_999, "250"],  # below prompt_min; too long for the model's 10 positions
    "window": [0, -3],
    "test_fraction": [0.0, 1.0, NAN, 0.001],  # 0.001 leaves no prompt in test
    "split_seed": [-1, 0.5],
}
DEVICE = ["gpu", "cuda:x", 0, *([] if torch.cuda.is_available() else ["cuda", "cuda:0"])]  # CUDA asked for, absent
SWEEP_SETUP = {
    "device": DEVICE,
    "seeds": [[-1], 0, [], "abc", [0, 0]],
    **NUMBER_LINE,
    "sft_epochs": [0, 2.5],
    "sft_lr": [0.0, -1e-3, 2.0, NAN],
    "dpo_epochs": [0],
    "dpo_lr": [0.0, math.inf],
    "batch_size": [0, -16],
    "n_evals": [0, 100_000],  # more evaluations than optimizer steps
    "kl_samples": [0, 1],
    "margin_pairs": [0, 10.5],
}
DRIFTING_ARM = {"drift_optimizer": ["lion", 3], "drift_lr": [0.0, 2.0], "drift_reference": ["dpo", None], "drift_sft_epochs": [0]}
BAD = {
    "grokking": {
        "betas": ["abc", -0.5, [], [0.1, -0.1], NAN, [0.1, 0.1]],
        "seeds": [[-1], "0"],
        **NUMBER_LINE,
        "sft_epochs": [0],
        "dpo_epochs": [0, -1],
        "optimizer": ["lion", 1],
        "lr": [0, 2, NAN],
        "weight_decay": [-0.1, NAN],
        "batch_size": [0],
        "grad_clip": [0, -5.0],
        "evals_per_epoch": [0, 100],  # 100 > the single optimizer step per epoch at batch 512
        "kl_samples": [1],
        "budget_batch_size": [-1, 1.5],
        "device": DEVICE,
    },
    "kl_sweep": {
        "n_betas": [0, 2.5],
        "beta_min": [0, -0.01, NAN],
        "beta_max": [0.001, 1e9],
        **SWEEP_SETUP,
        **DRIFTING_ARM,
        "drift_n_betas": [0],
    },
    "surgery": {"beta_a": [0, NAN], "beta_b": [0.001, 0.01], "n_betas": [1], **SWEEP_SETUP, **DRIFTING_ARM},
    "mixture_tpm": {
        "n_instances": [0],
        "n_outputs": [1, 0],
        "n_theory_betas": [0],
        "theory_seed": [-1],
        "betas": [[], [0.0], "abc"],
        **SWEEP_SETUP,
        "temperatures": [[0.5, 2.0], [0.0, 1.0], []],  # must include 1.0, all > 0
    },
    "vanishing_gradients": {
        "device": DEVICE,
        "prompt_min": [99, 1000],
        "prompt_max": [99, 1000],  # below the default prompt_min = 100; above 999
        "test_fraction": [0.0, 0.001],
        "hard_fraction": [-0.1, 1.5],
        "shift": [0, 100],
        "task_seed": [-1],
        "seeds": [[-1]],
        "pretrain_epochs": [0],
        "pretrain_lr": [0.0],
        "sft_epochs": [0],
        "sft_lr": [5.0],
        "label_fraction": [0.0, 1.5],
        "step_fraction": [0.0, 2.0],
        "rft_epochs": [0],
        "rft_lr": [-1e-4],
        "batch_size": [0],
        "n_evals": [0, 100_000],
    },
    "likelihood_displacement": {
        "device": DEVICE,
        "n_statements": [5, 0],
        "seeds": [[-1], "abc"],
        "d_model": [0, 66],  # 66 is not a multiple of the 4 heads
        "sft_steps": [0],
        "sft_lr": [0.0],
        "beta": [-1, 0, NAN],
        "dpo_steps": [0],
        "dpo_lr": [0.0],
        "prompts_per_pair": [0, 1000],
        "one_step_lr": [0.0, -1e-2],
        "n_instances": [0],
        "map_lead_weights": [[1.0], [0.0], []],
        "map_scales": [[0.0], [-1.0]],
        "map_optimizers": [["lion"], [], ["sgd", "sgd"]],
        "sgd_lr": [0.0],
        "rmsprop_lr": [2.0],
        "map_statements": [0, 1000],
        "words_p_ref": [1.0, 0.0],
        "words_margins": [[0.0], []],
    },
    "drift_map": {
        "device": DEVICE,
        "seeds": [[-1], "abc", [0, 0]],
        **NUMBER_LINE,
        "sft_epochs": [0],
        "sft_lr": [0.0],
        "grokking_sft_epochs": [0, 1.5],
        "optimizers": [["adam", "lion"], [], "adam", ["sgd", "sgd"]],
        "adaptive_lrs": [[0.0], [2.0], []],
        "sgd_lrs": [[-1.0]],
        "betas": [[0.0], [], [0.1, 0.1]],
        "batch_size": [0, 100_000],  # larger than the smallest training set
        "dpo_epochs": [0],
        "evals_per_epoch": [0, 100_000],  # more evaluations than optimizer steps per epoch
        "arm_batch_sizes": [[0], [100_000]],
        "arm_weight_decays": [[-0.1]],
        "long_epochs": [0, 3],  # the horizon arm must run longer than dpo_epochs = 3
        "arm_train_sizes": [[0], [100_000]],  # a subset must be smaller than the training set
        "kl_samples": [1],
        "margin_pairs": [0],
        "scored_train_pairs": [0],
        "confirmation_seeds": [[0], [-1], []],  # 0 is one of the map's seeds
    },
    "ches": {
        "device": DEVICE,
        "seeds": [[-1]],
        **NUMBER_LINE,
        "sft_epochs": [0],
        "sft_lr": [0.0],
        "batch_size": [0],
        "n_pairs": [0, 1_000_000],
        "pair_seed": [-1],
        "beta": [NAN, -0.1],
        "dpo_steps": [0],
        "dpo_lr": [0.0],
        "mitigation_beta": [0],
        "mitigation_epochs": [0],
        "mitigation_lr": [0.0],
        "mitigation_evals": [0, 100_000],
        "kl_samples": [0, 1],
        "drop_fractions": [[1.0], [0.0], "abc"],
        "sft_weights": [[0.0], [-1.0]],
        "grokking_beta": [0],
        "grokking_dpo_epochs": [0],
        **DRIFTING_ARM,
        "phrase_statements": [5, 2.5],
        "phrase_lead_weight": [1.0, 0.0],
        "phrase_sft_steps": [0],
        "phrase_subset_fraction": [0.0, 0.5, 0.001],  # 0.001 leaves each subset of 264 pairs empty
        "phrase_mitigation_steps": [0],
        "safety_refusal_share": [0.0, 1.0],
        "safety_both_refusal_share": [-0.1, 1.1],
        "safety_sft_steps": [0],
        "safety_beta": [0],
        "safety_lr": [0.0],
        "safety_epochs": [0, 1],  # 1 epoch has fewer optimizer steps than the 20 evaluations
    },
}


def _notebook(stem: str) -> nbformat.NotebookNode:
    return load_notebook_node(str(ROOT / "notebooks" / f"{stem}.ipynb"))  # as papermill loads it


def run_setup(stem: str, overrides: dict, results_root: Path) -> dict:
    """Inject overrides as papermill does, then run every code cell up to the first one after
    the injected parameters (the chapter's set-up cell) in a fresh namespace; returns it."""
    nb = parameterize_notebook(_notebook(stem), {**overrides, "results_root": str(results_root)})
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    for cell in code[: injected + 2]:
        exec(compile(cell.source, f"<{stem} cell>", "exec"), namespace)
    return namespace


def _cases():
    for stem, table in BAD.items():
        for name, values in table.items():
            for value in values:
                yield pytest.param(stem, name, value, id=f"{stem}-{name}={value!r}")


@pytest.mark.parametrize("stem", sorted(MODULES))
def test_every_parameter_has_bad_values(stem):
    declared = set(papermill.inspect_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb")))
    covered = set(BAD[stem]) | ANY
    assert declared - covered == set(), f"parameters of {stem} with no bad value in BAD: {sorted(declared - covered)}"
    assert covered - declared == set(), f"BAD names parameters {stem} does not have: {sorted(covered - declared)}"


@pytest.mark.parametrize("stem", sorted(MODULES))
def test_papermill_sees_every_parameter_with_its_type_and_the_spec_agrees(stem):
    """`papermill --help-notebook` lists every parameter with a type, and PARAMETERS of the
    chapter's module has exactly the notebook's parameters."""
    inspected = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"))
    specs = importlib.import_module(f"dpo_toolkit.studies.{stem}").PARAMETERS
    assert set(inspected) == set(specs)
    kinds = {"int": "int", "real": "float", "choice": "str", "text": "str", "device": "str", "ints": "list[int]"}
    kinds |= {"reals": "list[float]", "choices": "list[str]"}
    for name, p in inspected.items():
        assert p["help"], f"{stem}.{name} has no help comment"
        spec = specs[name]
        expected = kinds[spec.kind]
        assert expected in p["inferred_type_name"], f"{stem}.{name}: annotated {p['inferred_type_name']}, spec {spec.kind}"
        assert ("Optional" in p["inferred_type_name"]) == spec.optional, f"{stem}.{name}"


@pytest.mark.parametrize(("stem", "name", "value"), list(_cases()))
def test_a_bad_value_stops_the_setup_cell_naming_the_parameter(stem, name, value, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ParameterError, match=f"`{name}`"):
        run_setup(stem, {name: value}, tmp_path / "results")
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "results").exists(), "something was written before the parameters were checked"


@pytest.mark.parametrize("profile", ["quick", "paper"])
@pytest.mark.parametrize("stem", sorted(MODULES))
def test_the_profiles_pass_the_checks_and_write_only_the_results_folder(stem, profile, tmp_path):
    path = ROOT / "params" / profile / f"{stem}.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.exists() else {}
    namespace = run_setup(stem, overrides, tmp_path / "results")
    assert "out" in namespace
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    expected = [Path("results"), Path("results") / stem]
    if stem != "likelihood_displacement":  # every chapter that trains through the runner names the shared run cache
        expected.append(Path("results") / "runs")
    assert written == sorted(expected)


@pytest.mark.parametrize(
    ("stem", "args", "name"),
    [
        ("grokking", ["-p", "evals_per_epoch", "100"], "evals_per_epoch"),
        ("kl_sweep", ["-p", "n_evals", "100000"], "n_evals"),
        ("surgery", ["-p", "beta_a", "-1"], "beta_a"),
        ("mixture_tpm", ["-p", "n_theory_betas", "0"], "n_theory_betas"),
        ("vanishing_gradients", ["-p", "shift", "0"], "shift"),
        ("likelihood_displacement", ["-p", "beta", "-1"], "beta"),
        ("ches", ["-p", "dpo_steps", "0"], "dpo_steps"),
        ("drift_map", ["-p", "long_epochs", "1"], "long_epochs"),
        ("grokking", ["-p", "betas", "abc"], "betas"),
    ],
)
def test_papermill_stops_a_bad_value(stem, args, name, tmp_path):
    """The papermill command a reader runs: exits non-zero, names the parameter, writes nothing."""
    start = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "papermill"), str(ROOT / "notebooks" / f"{stem}.ipynb"), str(tmp_path / "out.ipynb"),
         "--cwd", str(ROOT / "notebooks"), "-p", "results_root", str(tmp_path / "results"), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"notebook parameter `{name}` must be" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
    assert time.perf_counter() - start < 120


def test_spec_wording_and_edges():
    assert real(0, 1000, open_low=True).describe() == "a number in (0, 1000]"
    assert Spec("ints", 0, unique=True).describe() == "a non-empty list of distinct integers ≥ 0"
    assert Spec("int", 1, optional=True).describe() == "None or an integer ≥ 1"
    assert not real(0).accepts(True) and not real(0).accepts(NAN) and not real(0).accepts(math.inf)
    assert not Spec("reals", 0).accepts("abc") and Spec("reals", 0, scalar_ok=True).accepts(0.5)


@pytest.mark.parametrize(("window", "n_ctx"), [(5, 10), (10, 10), (1, 4), (1, 5), (1, 6), (5, 6), (3, 7), (50, 9)])
def test_largest_prompt_against_brute_force(window, n_ctx):
    brute = max((p for p in range(0, 20_000) if len(str(p)) + len(str(p + window)) + 2 <= n_ctx), default=-1)
    assert largest_prompt(window, n_ctx) == brute
    assert largest_prompt(5, 10) == 9994  # the grokking set-up: 4 + 1 + 4 + 1 tokens


def test_a_parameter_error_is_a_value_error():
    assert issubclass(ParameterError, ValueError)
