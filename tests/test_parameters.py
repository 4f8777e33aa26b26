"""Every notebook parameter is checked before any work: a bad value stops the notebook in
its first code cell after `parameters`, names the parameter, and writes nothing.

The table BAD holds at least one bad value for every parameter of every notebook; a
parameter missing from it fails ``test_every_parameter_has_bad_values``, so a new
parameter cannot slip through unchecked. Values are injected exactly as papermill
injects them (``papermill.parameterize.parameterize_notebook``); the cells up to the
first one after `parameters` then run in-process, which takes milliseconds rather than
a kernel start per value; IPython's input history ``In``, where the check finds the names
papermill injected, is kept as IPython keeps it. ``test_papermill_stops_a_bad_value`` runs
the papermill command itself once per notebook. `results_root` (a folder) and names the
notebook does not have are tested on their own, below the table.
"""

from __future__ import annotations

import ast
import importlib
import math
import os
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

from dpo_toolkit.core.parameters import ParameterError, check
from dpo_toolkit.core.validate import Spec, integer, real
from dpo_toolkit.recipes.parameter_sets import largest_prompt

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
ANY = {"results_root"}  # tested apart (test_a_bad_results_root_stops_the_setup_cell_and_writes_nothing)

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
    "sft_epochs": [0, 2.5, 1001],
    "sft_lr": [0.0, -1e-3, 2.0, NAN],
    "dpo_epochs": [0, 1001],
    "dpo_lr": [0.0, math.inf],
    "batch_size": [0, -16, 5121],
    "n_evals": [0, 290, 100_000],  # 290 > the 282 optimizer steps of DPO at the defaults; ≤ 300
    "kl_samples": [0, 1, 161],
    "margin_pairs": [0, 10.5, 10_241],
}
DRIFTING_ARM = {
    "drift_optimizer": ["lion", 3],
    "drift_lr": [0.0, 2.0],
    "drift_reference": ["dpo", None],
    "drift_sft_epochs": [0, 1001],
    "drift_epochs": [0, 1001],
}
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
        "batch_size": [0, 5121],
        "grad_clip": [0, -5.0],
        "evals_per_epoch": [0, 100, 101],  # 100 > the 2 optimizer steps per epoch at batch 512; ≤ 100
        "kl_samples": [1, 161],
        "budget_batch_size": [-1, 1.5, 5121],
        "device": DEVICE,
    },
    "kl_sweep": {
        "n_betas": [0, 2.5, 301, 100_000_000],
        "beta_min": [0, -0.01, NAN],
        "beta_max": [0.001, 1e9],
        **SWEEP_SETUP,
        **DRIFTING_ARM,
        "drift_n_betas": [0, 101],
    },
    "surgery": {"beta_a": [0, NAN], "beta_b": [0.001, 0.01], "n_betas": [1, 101], **SWEEP_SETUP, **DRIFTING_ARM},
    "mixture_tpm": {
        "n_instances": [0, 30_001],
        "n_outputs": [1, 0, 61],
        "n_theory_betas": [0, 251],
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
        "shift": [0, 51],
        "wrong_labels": ["shared", 3],
        "task_seed": [-1],
        "seeds": [[-1]],
        "pretrain_epochs": [0, 4001],
        "pretrain_lr": [0.0],
        "sft_epochs": [0],
        "sft_lr": [5.0],
        "label_fraction": [0.0, 1.5],
        "step_fraction": [0.0, 2.0],
        "rft_epochs": [0, 1001],
        "rft_lr": [-1e-4],
        "batch_size": [0, 5121],
        "n_evals": [0, 100, 100_000],  # 100 > the 40 optimizer steps of RL fine-tuning at the defaults; ≤ 300
    },
    "likelihood_displacement": {
        "device": DEVICE,
        "n_statements": [5, 0, 601],
        "seeds": [[-1], "abc"],
        "d_model": [0, 66, 644],  # 66 is not a multiple of the 4 heads
        "sft_steps": [0, 3001],
        "sft_lr": [0.0],
        "beta": [-1, 0, NAN],
        "dpo_steps": [0, 3001],
        "dpo_lr": [0.0],
        "prompts_per_pair": [0, 1000],
        "one_step_lr": [0.0, -1e-2],
        "n_instances": [0, 10_001],
        "map_lead_weights": [[1.0], [0.0], []],
        "map_scales": [[0.0], [-1.0]],
        "map_optimizers": [["lion"], [], ["sgd", "sgd"]],
        "map_heads": [["half"], [], ["frozen", "frozen"], ["slow", "fast"]],
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
        "batch_size": [0, 1000, 100_000],  # 1000: larger than the smallest training set
        "dpo_epochs": [0],
        "evals_per_epoch": [0, 5, 101],  # 5: more evaluations than the 4 optimizer steps per epoch
        "arm_batch_sizes": [[0], [100_000]],
        "arm_weight_decays": [[-0.1]],
        "long_epochs": [0, 3],  # the horizon arm must run longer than dpo_epochs = 3
        "arm_train_sizes": [[0], [100_000]],  # a subset must be smaller than the training set
        "kl_samples": [1, 161],
        "margin_pairs": [0, 10_241],
        "scored_train_pairs": [0, 2561],
        "confirmation_seeds": [[0], [-1], []],  # 0 is one of the map's seeds
        "update_tasks": [["chess"], [], ["grokking", "grokking"]],
        "grokking_optimizers": [["sgd"], []],  # the update axis crosses adaptive optimizers only
        "kl_optimizers": [["lion"]],
        "update_lrs": [[0.0], [2.0]],
        "update_betas": [[0.0], [0.1, 0.1]],
        "grokking_read_epochs": [[0], [10, 3]],  # horizons of one long run: increasing
        "kl_read_epochs": [[3, 3], [30, 10]],
        "update_seeds": [[-1], []],
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
        "dpo_steps": [0, 3001],
        "dpo_lr": [0.0],
        "sgd_lr": [0.0, -0.1],
        "mitigation_beta": [0],
        "mitigation_epochs": [0, 1001],
        "mitigation_lr": [0.0],
        "mitigation_evals": [0, 290, 100_000],  # 290 > the 282 optimizer steps of C12's DPO; ≤ 300
        "kl_samples": [0, 1, 161],
        "drop_fractions": [[1.0], [0.0], "abc"],
        "sft_weights": [[0.0], [-1.0]],
        "grokking_beta": [0],
        "grokking_dpo_epochs": [0],
        **DRIFTING_ARM,
        "phrase_statements": [5, 2.5, 481],
        "phrase_lead_weight": [1.0, 0.0],
        "phrase_sft_steps": [0, 3001],
        "phrase_subset_fraction": [0.0, 0.5, 0.001],  # 0.001 leaves each subset of 264 pairs empty
        "phrase_mitigation_steps": [0],
        "sgd_mitigation_steps": [0, 2.5],
        "safety_refusal_share": [0.0, 1.0],
        "safety_both_refusal_share": [-0.1, 1.1],
        "safety_sft_steps": [0],
        "safety_beta": [0],
        "safety_lr": [0.0],
        "safety_epochs": [0, 1],  # 1 epoch has fewer optimizer steps than the 20 evaluations
        "safety_seeds": [[-1], [0, 0]],
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
    namespace: dict = {"In": [""]}  # IPython's input history: In[n] is the source of the n-th cell run
    for cell in code[: injected + 2]:
        namespace["In"].append(cell.source)
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
    kinds = {"int": "int", "real": "float", "choice": "str", "text": "str", "folder": "str", "device": "str", "ints": "list[int]"}
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
        ("drift_map", ["-p", "results_root", ""], "results_root"),
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


def test_papermill_stops_a_name_the_notebook_does_not_have(tmp_path):
    """In a real kernel the check reads the injected cell from IPython's `In`."""
    result = subprocess.run(
        [str(BIN / "papermill"), str(ROOT / "notebooks" / "kl_sweep.ipynb"), str(tmp_path / "out.ipynb"),
         "--cwd", str(ROOT / "notebooks"), "-p", "results_root", str(tmp_path / "results"), "-p", "betas", "0.1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "papermill set `betas`, which this notebook does not have; its parameters are: n_betas," in result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists()


ROOTS = {
    "empty": "",  # names no folder: results_dir would write into the working directory (notebooks/)
    "blank": "  ",
    "a file": "given/file",
    "under a file": "given/file/results",
    "unwritable": "given/locked/results",
}


@pytest.mark.parametrize("case", sorted(ROOTS))
@pytest.mark.parametrize("stem", sorted(MODULES))
def test_a_bad_results_root_stops_the_setup_cell_and_writes_nothing(stem, case, tmp_path, monkeypatch):
    """A results_root that names no folder, names a file, or cannot be created is refused by the
    check, which creates nothing (nor does it create the folder of a good one)."""
    if case == "unwritable" and os.geteuid() == 0:
        pytest.skip("root may write in a read-only folder")
    monkeypatch.chdir(tmp_path)  # where a relative results_root would land
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "file").write_text("")
    (tmp_path / "given" / "locked").mkdir(mode=0o555)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ParameterError, match="notebook parameter `results_root` must be None or the path of a folder"):
        run_setup(stem, {}, ROOTS[case])
    assert sorted(tmp_path.rglob("*")) == before, "something was written before the parameters were checked"


@pytest.mark.parametrize("stem", sorted(MODULES))
def test_a_name_the_notebook_does_not_have_stops_the_setup_cell(stem, tmp_path):
    """`papermill -p betas 0.1` on a chapter without `betas` is refused, naming it and listing the
    chapter's parameters; papermill's own PAPERMILL_* path variables pass."""
    parameters = importlib.import_module(f"dpo_toolkit.studies.{stem}").PARAMETERS
    with pytest.raises(ParameterError, match="papermill set `not_a_parameter`, which this notebook does not have") as error:
        run_setup(stem, {"PAPERMILL_INPUT_PATH": "in.ipynb", "not_a_parameter": 0.1}, tmp_path / "results")
    assert str(error.value).endswith("its parameters are: " + ", ".join(parameters))
    assert list(tmp_path.iterdir()) == [], "something was written before the parameters were checked"


def test_the_names_papermill_injected_are_read_from_the_input_history():
    specs, values = {"n_betas": integer(1, 300)}, {"n_betas": 8}
    check(specs, values)  # outside IPython: no history, nothing to compare
    check(specs, {**values, "In": ["", "n_betas = 8\nbetas = 0.1"]})  # no cell injected by papermill
    injected = {**values, "In": ["", "# Parameters\nbetas = 0.1\nn_betas = 8\n", "check_parameters(globals())"]}
    with pytest.raises(
        ParameterError, match=r"papermill set `betas`, which this notebook does not have; its parameters are: n_betas$"
    ):
        check(specs, injected)
    check(specs, injected, every=False)  # a part of the notebook's parameters (a shared set-up) is not asked
    later = {**injected, "In": [*injected["In"], "# Parameters\nn_betas = 9\n"]}
    check(specs, later)  # the latest injected cell counts


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


@pytest.mark.parametrize("bad", [[], [-1], True, [True], 1.5, "ab", [0.5], None])
def test_seed_list_is_the_one_check_of_seeds(bad):
    from dpo_toolkit.core.validate import seed_list

    assert seed_list(3) == [3] and seed_list([0, 2]) == [0, 2] and seed_list(range(2)) == [0, 1]
    with pytest.raises(ValueError, match=r"my_seeds must be a non-empty list of integers ≥ 0"):
        seed_list(bad, "my_seeds")


@pytest.mark.parametrize("stem", sorted(MODULES))
def test_the_rerun_boxs_example_passes_every_chapters_check_as_papermill_parses_it(stem, tmp_path):
    """The provenance box's example, parsed as papermill's command line parses it (-y: YAML, -p: a
    number or a string), must pass the chapter's parameter check: `-p seeds "[0, 1, 2, 3]"`, the
    example the box once printed, reaches the notebook as a string and is refused."""
    import shlex

    from papermill.cli import NoDatesSafeLoader

    from tools.bookbuild import RERUN_EXAMPLE

    flag, value = shlex.split(RERUN_EXAMPLE)
    assert flag == "-y"
    overrides = yaml.load(value, Loader=NoDatesSafeLoader)
    namespace = run_setup(stem, overrides, tmp_path / "results")
    assert namespace["seeds"] == [0, 1, 2, 3]
    with pytest.raises(ParameterError, match="seeds"):
        run_setup(stem, {"seeds": "[0, 1, 2, 3]"}, tmp_path / "results")  # what -p passes


@pytest.mark.parametrize("stem", ["kl_sweep", "surgery", "ches"])
def test_the_drifting_arm_is_the_drift_maps_drifting_recipe(stem):
    """Each chapter's drifting arm is DRIFTING_RECIPE: its optimizer, rate and reference by default,
    its paper profile's epochs from params/paper (the quick profile runs fewer)."""
    from dpo_toolkit.recipes.parameter_sets import DRIFTING_RECIPE

    defaults = {name: p["default"] for name, p in papermill.inspect_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb")).items()}
    paper = yaml.safe_load((ROOT / "params" / "paper" / f"{stem}.yaml").read_text())
    assert {**defaults, **paper}["drift_epochs"] == DRIFTING_RECIPE["drift_epochs"]
    for name in ("drift_optimizer", "drift_lr", "drift_reference"):
        assert ast.literal_eval(defaults[name]) == DRIFTING_RECIPE[name] and name not in paper, f"{stem}.{name}"
    assert int(defaults["drift_epochs"]) < DRIFTING_RECIPE["drift_epochs"]
