"""The float-order check's pieces (tools/float_order.py): the perturbations, the verdict
comparison, and that nbval fails when a compared output moves under a perturbation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from dpo_toolkit.core.claims import COLUMNS
from tools.float_order import FLOAT_ORDER_VARIABLES, alternative, changed_share, compare, main, perturbation


def _claims(folder, chapter, verdicts):
    (folder / chapter).mkdir(parents=True)
    interval = {"precondition": "none", "estimate": 1, "ci_low": 0.9, "ci_high": 1.1, "threshold": 0.5}
    rows = [
        {
            "claim_id": c,
            "statement": "s",
            "paper_value": "p",
            "our_value": "o",
            "verdict": v,
            "precondition": "none",
            "n": n,
            **interval,
        }
        for c, (v, n) in verdicts.items()
    ]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / chapter / "claims.csv", index=False)


def test_each_perturbation_sets_its_own_variables_and_all_sets_them_together():
    assert alternative("AVX512")["ATEN_CPU_CAPABILITY"] == "avx2"
    assert alternative("AVX512_BF16")["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert alternative("AVX2") == {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
    }
    assert perturbation("threads", "AVX2") == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert perturbation("ulp", "AVX2") == {"DPO_FLOAT_PERTURB": "1"}
    assert perturbation("all", "AVX2") == {**perturbation("threads", "AVX2"), **alternative("AVX2"), "DPO_FLOAT_PERTURB": "1"}
    with pytest.raises(ValueError, match="perturbation must be one of"):
        perturbation("gpu")


def test_compare_finds_a_flipped_verdict_a_changed_n_and_a_missing_chapter(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _claims(a, "vanishing_gradients", {"C14": ("reproduced", 3), "C15": ("inconclusive", 1), "C16": ("inconclusive", 3)})
    _claims(b, "vanishing_gradients", {"C14": ("inconclusive", 3), "C15": ("inconclusive", 1), "C16": ("inconclusive", 2)})
    _claims(a, "grokking", {"C1": ("not reproduced", 3)})
    assert compare(a, b) == [
        "grokking: claims.csv in only one of " + f"{a}, {b}",
        "vanishing_gradients C14: reproduced (n=3) vs inconclusive (n=3)",
        "vanishing_gradients C16: inconclusive (n=3) vs inconclusive (n=2)",
    ]
    assert main(["compare", str(a), str(b)]) == 1


def test_compare_passes_on_equal_verdicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _claims(a, "kl_sweep", {"C4": ("partly", 3)})
    _claims(b, "kl_sweep", {"C4": ("partly", 3)})
    assert compare(a, b) == []
    assert main(["compare", str(a), str(b)]) == 0
    assert compare(tmp_path / "none", tmp_path / "nothing") != []  # nothing to compare is a failure, not a pass


def test_the_ulp_and_vector_perturbations_move_the_bits_of_a_training_step(tmp_path):
    """A perturbation that moves no bit would prove nothing: the initial-weight nudge and the
    vector-unit cap each change most of one training step's gradient entries."""
    assert changed_share("ulp", tmp_path) > 0.5
    assert changed_share("vector", tmp_path) > 0.1


CELL = """import torch
from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.model import build_model
print({output})"""


def _nbval(tmp_path: Path, output: str, env: dict[str, str]) -> int:
    """nbval on a one-cell notebook, tagged nbval-check-output, whose stored output is what the
    cell prints unperturbed; returns pytest's exit code under `env`."""
    source = CELL.format(output=output)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(FLOAT_ORDER_VARIABLES)}
    stored = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True, env=clean).stdout
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["nbval-check-output"]}, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    path = tmp_path / "probe.ipynb"
    path.write_text(json.dumps(nbformat.v4.new_notebook(cells=[cell])))
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q", str(path)]
    return subprocess.run(command, cwd=tmp_path, env={**clean, **env}, capture_output=True).returncode


def test_nbval_fails_when_a_compared_output_moves_under_a_perturbation(tmp_path):
    weight = "repr(float(build_model(ModelConfig(), 0).unembed.weight.detach()[0, 0]))"
    assert _nbval(tmp_path, weight, {}) == 0
    assert _nbval(tmp_path, weight, perturbation("ulp")) == 1  # the last digit moved: the check catches it
    rounded = "round(float(build_model(ModelConfig(), 0).unembed.weight.detach()[0, 0]), 3)"
    assert _nbval(tmp_path, rounded, perturbation("ulp")) == 0  # an output at its justified precision survives


MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["test-float-order", "PERTURB=gpu"], "PERTURB must be one of threads, vector, ulp, all; got 'gpu'"),
        (["install", "PYTHON=./python3.10"], "Python 3.11 or newer is needed"),
    ],
)
def test_make_refuses_a_bad_setting_before_any_work(tmp_path, arguments, message):
    """A bad PERTURB, or a Python older than 3.11, stops make at once with a sentence naming it,
    before a venv is made or a notebook runs."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "_toc.yml", "tools/__init__.py", "tools/float_order.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((MAKEFILE.parent / name).read_text())
    old = tmp_path / "python3.10"  # answers like Python 3.10 would
    old.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 1\necho "Python 3.10.12"\n')
    old.chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    if arguments[0] != "install":  # a venv already made: only the setting can stop make
        (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
        (tmp_path / ".venv" / ".installed").touch()
    result = subprocess.run(["make", "--no-print-directory", *arguments], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".venv",
        "Makefile",
        "_toc.yml",
        "constraints.txt",
        "pyproject.toml",
        "python3.10",
        "tools",
    ]
