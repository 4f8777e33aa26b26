import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpo_toolkit.core.stats import logsumexp
from dpo_toolkit.core.storage import write_csv

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_toolkit"


def test_logsumexp_against_the_definition_with_zero_mass_entries():
    x = np.array([[0.5, -np.inf, 2.0], [-3.0, 1.0, -np.inf]])
    assert logsumexp(x, axis=1) == pytest.approx([math.log(math.exp(0.5) + math.exp(2.0)), math.log(math.exp(-3) + math.e)])
    assert float(logsumexp(np.array([1000.0, 1000.0]))) == pytest.approx(1000 + math.log(2))  # no overflow
    assert float(logsumexp(np.array([-np.inf, -np.inf]))) == -np.inf


def test_write_csv_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "curve.csv"
    write_csv(pd.DataFrame({"step": [0, 1]}), path)
    write_csv(pd.DataFrame({"step": [0, 1, 2]}), path)
    assert pd.read_csv(path)["step"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["curve.csv"]


def test_no_module_imports_another_module_s_private_name():
    offenders = [
        f"{path.name}: {alias.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert offenders == []
