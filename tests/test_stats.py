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


def _imports(path: Path) -> list[str]:
    """The absolute module names a file imports from (relative imports resolved within dpo_toolkit)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_layers_core_never_imports_a_study_and_a_study_never_imports_another():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        for name in _imports(path):
            if not name.startswith("dpo_toolkit.studies"):
                continue
            if parts[0] == "core":
                offenders.append(f"{path.name} (core) imports {name}")
            elif parts[0] == "studies" and len(parts) > 1:
                own = parts[1].removesuffix(".py")
                if name.split(".")[2] != own:
                    offenders.append(f"{'/'.join(parts)} imports another study: {name}")
    assert offenders == []


def test_no_module_but_plotting_exceeds_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert set(long) <= {"plotting.py"}, long


def test_short_paths_are_the_core_objects_and_unknown_names_fail():
    import dpo_toolkit
    from dpo_toolkit.core.config import DPOConfig
    from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo

    assert dpo_toolkit.DPOConfig is DPOConfig and dpo_toolkit.run_sft_then_dpo is run_sft_then_dpo
    assert all(getattr(dpo_toolkit, name) is not None for name in dpo_toolkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dpo_toolkit.nothing  # noqa: B018
