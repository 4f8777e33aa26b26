"""The chapters as artifacts: paired twins in sync, papermill parameters, nbval's comparison."""

import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.md"))
BIN = Path(sys.executable).parent


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("md", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_twin_says_what_the_md_says(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {md}`"
    assert _cells(jupytext.read(md)) == _cells(jupytext.read(ipynb)), f"{md.name} and {ipynb.name} differ: run `make notebooks`"


@pytest.mark.parametrize("md", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_and_checked_outputs(md):
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged `parameters`"
    checked = [c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked, "nbval would compare nothing: tag at least one deterministic cell `nbval-check-output`"
    assert all(c.outputs for c in checked), "a checked cell has no stored output: run `make notebooks`"


def _run_nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=300,
    )


def test_nbval_fails_when_a_checked_output_is_altered(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(6 * 7)", metadata={"tags": ["nbval-check-output"]})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    cell.execution_count = 1
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), cell]
    good = tmp_path / "good.ipynb"
    nbformat.write(nb, good)
    assert _run_nbval(good).returncode == 0
    cell.outputs[0].text = "41\n"
    bad = tmp_path / "bad.ipynb"
    nbformat.write(nb, bad)
    result = _run_nbval(bad)
    assert result.returncode == 1, result.stdout
    assert "41" in result.stdout and "42" in result.stdout


def test_every_chapter_is_in_the_book_with_its_paper_profile_parameters_declared():
    toc = (ROOT / "_toc.yml").read_text()
    for md in NOTEBOOKS:
        assert f"file: book/chapters/{md.stem}\n" in toc, f"{md.stem} is not in _toc.yml, so `make book` would skip it"
    from tools.bookbuild import profile_overrides

    for params in (ROOT / "params").glob("*/*.yaml"):
        assert (ROOT / "notebooks" / f"{params.stem}.md").exists(), f"{params} names no chapter"
        profile_overrides(params.stem, params.parent.name)  # raises on a parameter the notebook does not declare
