import json
from typing import ClassVar

import nbformat
import pytest

from tools import bookbuild


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A minimal project: one chapter notebook with a parameters cell, a paper profile, a toolkit file."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "paper").mkdir(parents=True)
    (tmp_path / "dpo_toolkit").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("seeds = [0]  # training seeds\nn_evals = 5  # evaluations", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(len(seeds) * n_evals)"),
    ]
    nbformat.write(nb, tmp_path / "notebooks" / "demo.ipynb")
    (tmp_path / "notebooks" / "demo.md").write_text("# A demo chapter\n")
    (tmp_path / "params" / "paper" / "demo.yaml").write_text("seeds: [0, 1, 2]\n")
    (tmp_path / "dpo_toolkit" / "core.py").write_text("X = 1\n")
    monkeypatch.setattr(bookbuild, "ROOT", tmp_path)
    monkeypatch.delenv("BOOK_REPOSITORY_URL", raising=False)
    return tmp_path


@pytest.fixture
def executions(monkeypatch):
    """Replace papermill's execution by a copy of the notebook, counting the runs."""
    calls = []

    def fake_execute(source, output, parameters, **kwargs):
        calls.append(parameters)
        nbformat.write(nbformat.read(source, as_version=4), output)

    monkeypatch.setattr(bookbuild.papermill, "execute_notebook", fake_execute)
    return calls


def test_unchanged_chapter_is_skipped_and_any_change_reruns_it(repo, executions, tmp_path):
    executed, results = tmp_path / "out", tmp_path / "results"
    assert bookbuild.run_chapter("demo", "paper", executed, results) == "ran"
    assert executions == [{"seeds": [0, 1, 2]}]
    assert bookbuild.run_chapter("demo", "paper", executed, results) == "cached"
    assert len(executions) == 1
    for change in (
        lambda: (repo / "dpo_toolkit" / "core.py").write_text("X = 2\n"),
        lambda: (repo / "params" / "paper" / "demo.yaml").write_text("seeds: [0, 1]\n"),
        lambda: (repo / "notebooks" / "demo.ipynb").write_text((repo / "notebooks" / "demo.ipynb").read_text() + "\n"),
    ):
        change()
        assert bookbuild.run_chapter("demo", "paper", executed, results) == "ran"
        assert bookbuild.run_chapter("demo", "paper", executed, results) == "cached"
    assert bookbuild.run_chapter("demo", "quick", executed, results) == "ran"  # another profile is another run
    assert executions[-1] == {}


def test_provenance_cell_names_parameters_commit_machine_and_downloads(repo, executions, tmp_path):
    results = tmp_path / "results"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "claims.csv").write_text("claim_id,statement,paper_value,our_value,verdict\n")
    (results / "demo" / "runs").mkdir()  # caches are not offered for download
    bookbuild.run_chapter("demo", "paper", tmp_path / "out", results)
    last = nbformat.read(tmp_path / "out" / "demo.ipynb", as_version=4).cells[-1].source
    assert "| `seeds` | `[0, 1, 2]` | `[0]` | training seeds |" in last
    assert "| `n_evals` | `5` | `5` | evaluations |" in last
    assert "papermill notebooks/demo.ipynb demo-out.ipynb --cwd notebooks -f params/paper/demo.yaml" in last
    assert "CPUs" in last and "torch" in last and "wall time" in last
    assert "{download}`claims.csv <downloads/demo/claims.csv>`" in last
    assert (tmp_path / "out" / "downloads" / "demo" / "claims.csv").exists()
    assert not (tmp_path / "out" / "downloads" / "demo" / "runs").exists()


def test_a_failed_chapter_is_recorded_and_rerun(repo, monkeypatch, tmp_path):
    def failing(source, output, parameters, **kwargs):
        nbformat.write(nbformat.read(source, as_version=4), output)
        raise RuntimeError("boom\nValueError: seeds must be a non-empty list")

    monkeypatch.setattr(bookbuild.papermill, "execute_notebook", failing)
    executed = tmp_path / "out"
    assert bookbuild.run_chapter("demo", "paper", executed, tmp_path / "results") == "failed"
    assert "seeds must be a non-empty list" in (executed / "demo.failed").read_text()
    assert "**This chapter failed:**" in nbformat.read(executed / "demo.ipynb", as_version=4).cells[-1].source
    assert bookbuild.run_chapter("demo", "paper", executed, tmp_path / "results") == "failed"  # never cached


def test_unknown_parameter_in_a_profile_is_an_error(repo, executions, tmp_path):
    (repo / "params" / "paper" / "demo.yaml").write_text("sedes: [0]\n")
    with pytest.raises(ValueError, match=r"unknown parameters \['sedes'\]"):
        bookbuild.run_chapter("demo", "paper", tmp_path / "out", tmp_path / "results")


def test_scorecard_counts_verdicts_and_names_missing_and_failed_chapters(repo, tmp_path):
    results, executed = tmp_path / "results", tmp_path / "out"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "claims.csv").write_text(
        "claim_id,statement,paper_value,our_value,verdict,precondition,n,estimate,ci_low,ci_high,threshold\n"
        "C1,It holds,1,1,reproduced,none,3,1,0.9,1.1,0.5\nC2,It | splits,2,3,partly,none,,,,,\n"
        "C3,No,a,b,not reproduced,none,5,0.1,0,0.2,0.5\nC4,Also,x,x,reproduced,none,,,,,\n"
        "C5,Lemma,0,0,verified (identity),none,,,,,\nC6,Drift,a,b,untestable here,no drift: -0.1,3,-0.1,-0.2,0,0\n"
        "C7,Maybe,a,b,inconclusive,none,1,0.6,-inf,inf,0.5\n"
    )
    for stem in ("gone", "broken"):
        (repo / "notebooks" / f"{stem}.md").write_text(f"# The {stem} chapter\n")
    executed.mkdir()
    (executed / "broken.failed").write_text("RuntimeError: out of memory\n")
    page, summary, failed = bookbuild.scorecard(["demo", "gone", "broken"], executed, results, "paper")
    assert summary.startswith(
        "4 of 7 claims tested: 2 reproduced, 1 partly, 1 not reproduced; 1 inconclusive; 1 untestable here; "
        "1 verified as identities "
        "— from 1 of 3 chapters"
    )
    tested, inconclusive, untestable, identities = (
        page.index("## Claims tested here"),
        page.index("## Inconclusive"),
        page.index("## Untestable here"),
        page.index("## Checks of identities"),
    )
    assert tested < page.index("| C3 |") < inconclusive < page.index("| C7 |") < untestable < page.index("| C6 |")
    assert untestable < identities < page.index("| C5 |")
    assert "2 chapters without claims" in summary and failed
    assert "| C2 | **partly** | It \\| splits | {doc}`A demo chapter <demo>` |" in page
    assert 'data-profile="paper"' in page and "Built at the <b>paper</b> profile (3 seeds per chapter)" in page
    matrix_row = next(line for line in page.splitlines() if line.startswith("| {doc}`A demo chapter"))
    assert matrix_row.count('class="verdict-badge"') == 7  # one badge per claim
    assert "✓ C1</span>" in matrix_row and "? C7</span>" in matrix_row  # a glyph, not colour alone
    assert 'href="demo.html#claim-C1"' in matrix_row  # each badge links its claim's row
    assert 'data-verdict="partly"' in matrix_row and 'title="C2: partly. It &#124; splits"' in matrix_row  # | ends a cell
    assert "| {doc}`The broken chapter <broken>` | chapter failed |" in page
    assert "The gone chapter <gone>`: **no claims table**" in page
    assert "The broken chapter <broken>`: **the chapter failed** (`RuntimeError: out of memory`)" in page


def test_book_config_adds_the_repository_when_known(repo, monkeypatch):
    (repo / "_config.yml").write_text("title: demo\nhtml:\n  home_page_in_navbar: true\n")
    assert "repository" not in bookbuild.book_config() or bookbuild.repository() is not None
    monkeypatch.setenv("BOOK_REPOSITORY_URL", "git@github.com:someone/book.git")
    config = bookbuild.book_config()
    assert config["repository"] == {"url": "https://github.com/someone/book", "branch": "main"}
    assert config["html"]["use_repository_button"] is True and config["html"]["home_page_in_navbar"] is True
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"  # header launch buttons
    assert json.dumps(config)  # plain data, writable as YAML


def test_launch_buttons_open_the_notebook_in_the_repository():
    import importlib.util

    spec = importlib.util.spec_from_file_location("page_fixes", bookbuild.ROOT / "book" / "_ext" / "page_fixes.py")
    page_fixes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page_fixes)
    theme = "https://github.com/someone/book/blob/main/book/chapters/ches.ipynb"  # what sphinx-book-theme builds
    buttons = [
        {"label": "download-buttons", "buttons": [{"url": "_sources/book/chapters/ches.ipynb"}]},
        {"label": "launch-buttons", "buttons": [
            {"text": "Colab", "url": "https://colab.research.google.com/github/someone/book/blob/main/book/chapters/ches.ipynb"},
            {"text": "Binder", "url": "https://mybinder.org/v2/gh/someone/book/main?urlpath=lab/tree/book/chapters/ches.ipynb"},
            {"text": "Live Code", "javascript": "initThebeSBT()"},
        ]},
    ]  # fmt: skip
    page_fixes.launch_to_sources(buttons)
    colab, binder, live = buttons[1]["buttons"]
    assert colab["url"] == "https://colab.research.google.com/github/someone/book/blob/main/notebooks/ches.ipynb"
    assert binder["url"].endswith("urlpath=lab/tree/notebooks/ches.ipynb") and "url" not in live
    assert buttons[0]["buttons"][0]["url"] == "_sources/book/chapters/ches.ipynb"  # the download stays the built page's
    assert "book/chapters" in theme


def test_cli_runs_several_chapters_and_leaves_an_unchanged_scorecard_untouched(repo, executions, tmp_path, capsys):
    nb = nbformat.read(repo / "notebooks" / "demo.ipynb", as_version=4)
    nbformat.write(nb, repo / "notebooks" / "other.ipynb")
    (repo / "notebooks" / "other.md").write_text("# Another chapter\n")
    executed, results = tmp_path / "out", tmp_path / "results"
    common = ["--executed", str(executed), "--results", str(results)]
    assert bookbuild.main(["chapter", "demo", "other", "--profile", "quick", "--jobs", "1", *common]) == 0
    assert "demo: ran" in capsys.readouterr().out and len(executions) == 2
    assert bookbuild.main(["scorecard", "demo", "other", "--profile", "paper", *common]) == 0
    page = executed / "scorecard.md"
    first = page.stat().st_mtime_ns
    assert bookbuild.main(["scorecard", "demo", "other", "--profile", "paper", *common]) == 0
    assert page.stat().st_mtime_ns == first  # unchanged content is not rewritten, so the site need not re-render it
    with pytest.raises(SystemExit):
        bookbuild.main(["chapter", "missing", "--profile", "quick", *common])


def test_peak_memory_sees_a_child_process_and_timings_keep_one_row_per_chapter(tmp_path):
    import csv
    import subprocess
    import sys

    from tools.bookbuild import record_timing
    from tools.peakmem import PeakMemory

    with PeakMemory(0.05) as memory:
        subprocess.run([sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(0.5)"], check=True)
    assert 200 <= memory.mib < 1000
    record_timing(tmp_path, "a", "quick", "ran", 1.0, 10.0)
    record_timing(tmp_path, "b", "quick", "ran", 2.0, 20.0)
    record_timing(tmp_path, "a", "paper", "failed", 3.0, 30.0)
    with (tmp_path / "timings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["chapter"], r["profile"], r["outcome"], r["wall_s"]) for r in rows] == [
        ("a", "paper", "failed", "3.0"),
        ("b", "quick", "ran", "2.0"),
    ]


@pytest.mark.parametrize("stem", ["grokking", "ches", "vanishing_gradients"])
def test_provenance_reads_every_typed_parameter_as_papermill_does(stem):
    """Parameters cells read `name: type = value  # help`; the provenance table lists each one,
    with the default and help `papermill --help-notebook` shows."""
    inspected = bookbuild.papermill.inspect_notebook(str(bookbuild.ROOT / "notebooks" / f"{stem}.ipynb"))
    assert bookbuild.notebook_parameters(stem) == {name: (p["default"], p["help"]) for name, p in inspected.items()}
    assert "results_root" in inspected and len(inspected) >= 12


def test_expected_seconds_prefer_the_last_run_over_the_committed_profile(repo, tmp_path):
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "profile.csv").write_text(
        "chapter,profile,category,seconds,share,chapter_s\n"
        "a,paper,training,1,0.1,100\nb,paper,training,1,0.1,300\nb,quick,training,1,0.1,7\n"
    )
    executed = tmp_path / "out"
    executed.mkdir()
    assert bookbuild.expected_seconds(["a", "b", "c"], "paper", executed) == {"a": 100.0, "b": 300.0, "c": 0.0}
    bookbuild.record_timing(executed, "a", "paper", "ran", 500.0, 10.0)
    bookbuild.record_timing(executed, "c", "quick", "ran", 50.0, 10.0)  # another profile's run does not count
    assert bookbuild.expected_seconds(["a", "b", "c"], "paper", executed) == {"a": 500.0, "b": 300.0, "c": 0.0}
    assert set(bookbuild.read_timings(executed)) == {"a", "c"}  # one row per chapter, both kept


class FakeProcess:
    """A chapter process that finishes after `polls` polls with `returncode`."""

    running: ClassVar[list[str]] = []
    started: ClassVar[list[tuple]] = []
    most_at_once = 0

    def __init__(self, command, cwd, env):
        self.stem, self.env = command[command.index("chapter") + 1], env
        self.polls, self.returncode = {"slow": 3, "mid": 2}.get(self.stem, 1), 1 if self.stem == "broken" else 0
        FakeProcess.running.append(self.stem)
        FakeProcess.most_at_once = max(FakeProcess.most_at_once, len(FakeProcess.running))
        FakeProcess.started.append((self.stem, env["OMP_WAIT_POLICY"], command[-2:]))

    def poll(self):
        self.polls -= 1
        if self.polls > 0:
            return None
        FakeProcess.running.remove(self.stem)
        return self.returncode


def test_chapters_run_longest_first_at_most_jobs_at_once(repo, tmp_path, monkeypatch):
    FakeProcess.running, FakeProcess.started, FakeProcess.most_at_once = [], [], 0
    monkeypatch.setattr(bookbuild.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(bookbuild.time, "sleep", lambda s: None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    executed = tmp_path / "out"
    executed.mkdir()
    for stem, seconds in (("short", 1.0), ("slow", 90.0), ("mid", 40.0), ("broken", 5.0)):
        bookbuild.record_timing(executed, stem, "paper", "ran", seconds, 1.0)
    crashed = bookbuild.run_chapters(["short", "mid", "broken", "slow", "new"], "paper", executed, tmp_path / "r", jobs=2)
    assert crashed == 1  # "broken" exited 1
    assert [stem for stem, _, _ in FakeProcess.started] == ["slow", "mid", "broken", "short", "new"]
    assert FakeProcess.most_at_once == 2 and FakeProcess.running == []
    assert all(policy == "PASSIVE" and tail == ["--jobs", "1"] for _, policy, tail in FakeProcess.started)
    FakeProcess.started = []
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a reader's own setting is kept
    assert bookbuild.run_chapters(["short"], "paper", executed, tmp_path / "r", jobs=3) == 0
    assert FakeProcess.started[0][1] == "ACTIVE"


def test_jobs_must_be_positive(repo, capsys):
    with pytest.raises(SystemExit):
        bookbuild.main(["chapter", "demo", "--profile", "paper", "--executed", "x", "--results", "y", "--jobs", "0"])
    assert "--jobs must be ≥ 1, got 0" in capsys.readouterr().err


CLAIMS_CSV = """claim_id,statement,paper_value,our_value,verdict,precondition,n,estimate,ci_low,ci_high,threshold
C1,It drifts.,80 %,81 %,not reproduced,none,3,-0.48,-0.56,-0.40,0
C2,It rises.,monotone,yes,inconclusive,none,3,0.09,-0.11,0.30,0.05
C3,An identity.,holds,holds,verified (identity),none,,,,,
"""


def test_every_chapter_opens_with_its_answer_computed_from_its_claims(repo, executions, tmp_path):
    results = tmp_path / "results"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "claims.csv").write_text(CLAIMS_CSV)
    bookbuild.run_chapter("demo", "paper", tmp_path / "out", results)
    cells = nbformat.read(tmp_path / "out" / "demo.ipynb", as_version=4).cells
    box = cells[0].source  # the demo notebook has no Markdown cell: the box comes first
    assert box.startswith("::::{admonition} The answer at the `paper` profile") and cells[1].cell_type == "code"
    assert "**A demo chapter** At this profile: C1 not reproduced; besides, 1 inconclusive, 1 exact identities verified." in box
    assert "-0.48 [-0.56, -0.4], n = 3, threshold 0" in box and "(exact)" in box
    assert box.count('class="verdict-badge"') == 3 and "✗ C1" in box and "? C2" in box


def test_the_answer_says_when_nothing_is_decided():
    import pandas as pd

    from tools.chapter_answer import answer_sentence

    claims = pd.read_csv(__import__("io").StringIO(CLAIMS_CSV), dtype=str, keep_default_na=False)
    undecided = claims.assign(verdict=["inconclusive", "untestable here", "verified (identity)"])
    assert answer_sentence(undecided) == (
        "Nothing is decided on trained models at this profile (1 inconclusive, 1 untestable here, 1 exact identities verified)."
    )


def test_the_answer_box_goes_right_under_the_question(repo, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A demo chapter?\n\n**Claim.** It drifts.\n\n## The task\n\nDetails.")]
    claims = tmp_path / "claims.csv"
    claims.write_text(CLAIMS_CSV)
    bookbuild.add_answer(nb, "demo", "quick", claims, None)
    assert [c.source.split("\n")[0] for c in nb.cells] == [
        "# A demo chapter?",
        "::::{admonition} The answer at the `quick` profile",
        "**Claim.** It drifts.",
    ]
    assert nb.cells[0].source == "# A demo chapter?" and nb.cells[2].source.endswith("## The task\n\nDetails.")
    assert '<a class="badge-link" href="#claim-C1"><span class="verdict-badge"' in nb.cells[1].source  # to its row
    failed = nbformat.v4.new_notebook()
    failed.cells = [nbformat.v4.new_markdown_cell("# A demo chapter")]
    bookbuild.add_answer(failed, "demo", "quick", claims, "RuntimeError: boom")
    assert len(failed.cells) == 1  # a failed chapter has no answer to give


def test_every_figure_gets_its_caption_as_alt_text():
    nb = nbformat.v4.new_notebook()
    figure = nbformat.v4.new_code_cell("fig = plot()")
    figure.metadata["mystnb"] = {"figure": {"caption": "OOD rate against\n  KL, per seed.", "name": "fig-x"}}
    own = nbformat.v4.new_code_cell("fig = plot()")
    own.metadata["mystnb"] = {"figure": {"caption": "c"}, "image": {"alt": "chosen by hand"}}
    plain = nbformat.v4.new_code_cell("x = 1")
    nb.cells = [nbformat.v4.new_markdown_cell("# T"), figure, own, plain]
    bookbuild.add_alt_text(nb)
    assert figure.metadata["mystnb"]["image"]["alt"] == "OOD rate against KL, per seed."
    assert own.metadata["mystnb"]["image"]["alt"] == "chosen by hand"
    assert "mystnb" not in plain.metadata


def test_the_build_fails_when_the_install_cell_installs_another_repository(repo, monkeypatch, tmp_path, capsys):
    (repo / "_config.yml").write_text("title: demo\n")
    monkeypatch.setenv("BOOK_REPOSITORY_URL", "https://github.com/someone/fork")
    out = tmp_path / "config.yml"
    assert bookbuild.main(["config", str(out)]) == 2 and not out.exists()
    assert "installs the toolkit from https://github.com/dpo-toolkit/dpo-toolkit" in capsys.readouterr().err
    monkeypatch.setattr(bookbuild.install_cell, "REPOSITORY", "https://github.com/someone/fork")
    assert bookbuild.main(["config", str(out)]) == 0 and out.exists()
