"""Build steps of the Jupyter Book behind `make book`.

python -m tools.bookbuild chapter STEM --profile P --executed DIR --results DIR
    Execute notebooks/STEM.ipynb with papermill into DIR/STEM.ipynb, unless the
    notebook, its parameter file and the toolkit code are unchanged since its last
    successful run at this profile. Append the chapter's provenance (parameters,
    commit, wall time, machine), a re-run box and download links. Exit 0 whether the
    chapter ran, was cached or failed; a failure is recorded in DIR/STEM.failed.
    With several stems and --jobs N (default 2), N chapters run at once, each in its own
    process with the machine's thread count, longest first (see run_chapters).
python -m tools.bookbuild scorecard STEM... --executed DIR --results DIR
    Write DIR/scorecard.md and DIR/scorecard_summary.md from every chapter's
    claims.csv, naming each chapter that failed or has no claims. Exit 1 if any
    chapter failed.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import fcntl
import hashlib
import html
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import torch
import yaml
from papermill.translators import PythonTranslator

from dpo_toolkit import __version__
from dpo_toolkit.core.claims import IDENTITY, INCONCLUSIVE, TESTED, UNTESTABLE, VERDICTS, claim_anchor, read_claims
from tools import install_cell
from tools.chapter_answer import answer_markdown, badge
from tools.intro_answer import intro_markdown
from tools.peakmem import PeakMemory

ROOT = Path(__file__).resolve().parents[1]
DOWNLOADABLE = (".csv",)  # result files copied next to the executed chapter for download; caches (runs/) are not


def repository() -> tuple[str, str] | None:
    """(https URL, branch) of the book's GitHub repository, or None when unknown.

    From $BOOK_REPOSITORY_URL (and $BOOK_REPOSITORY_BRANCH, default main), else from the
    git remote 'origin' when it is on github.com.
    """
    url = os.environ.get("BOOK_REPOSITORY_URL") or _git("remote", "get-url", "origin")
    if url.startswith("git@github.com:"):
        url = "https://github.com/" + url.removeprefix("git@github.com:")
    url = url.removesuffix(".git")
    if not url.startswith("https://github.com/"):
        return None
    return url, os.environ.get("BOOK_REPOSITORY_BRANCH", "main")


def book_config() -> dict:
    """_config.yml, with the repository and its buttons when the repository is known."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = repository()
    if repo:
        config["repository"] = {"url": repo[0], "branch": repo[1]}
        config.setdefault("html", {}).update(use_repository_button=True, use_issues_button=True)
        # Header buttons that open the chapter in Binder or Colab; book/_ext/page_fixes.py points them at
        # the notebook in notebooks/ (the theme would link the build's copy, book/chapters/<stem>.ipynb).
        config["launch_buttons"] = {
            "notebook_interface": "jupyterlab",
            "binderhub_url": "https://mybinder.org",
            "colab_url": "https://colab.research.google.com",
        }
    return config


def params_file(stem: str, profile: str) -> Path | None:
    """params/<profile>/<stem>.yaml when it exists (the quick profile has none)."""
    path = ROOT / "params" / profile / f"{stem}.yaml"
    return path if path.exists() else None


def chapter_key(stem: str, profile: str) -> str:
    """Hash of everything a chapter's output depends on: its notebook, its parameter file at
    this profile, every file of the toolkit, this build script, and the profile's name."""
    digest = hashlib.sha256(profile.encode())
    digest.update(repr(repository()).encode())  # the launch links on the page name it
    params = params_file(stem, profile)
    sources = [ROOT / "notebooks" / f"{stem}.ipynb", *([params] if params else []), Path(__file__).resolve()]
    sources += sorted((ROOT / "dpo_toolkit").rglob("*.py"))
    for path in sources:
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def notebook_parameters(stem: str) -> dict[str, tuple[str, str]]:
    """The defaults of the cell tagged `parameters`, as `papermill --help-notebook` reads them
    (lines `name: type = value  # help`): {name: (value source, help)}."""
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"notebooks/{stem}.ipynb must have exactly one cell tagged 'parameters', found {len(cells)}")
    return {p.name: (p.default, p.help) for p in PythonTranslator.inspect(cells[0])}


def profile_overrides(stem: str, profile: str) -> dict:
    """The parameters params/<profile>/<stem>.yaml sets; each must be one the notebook declares."""
    params = params_file(stem, profile)
    overrides = yaml.safe_load(params.read_text()) if params else {}
    if not isinstance(overrides, dict | None):
        raise ValueError(f"{params}: expected a mapping of parameter names to values")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(notebook_parameters(stem)))
    if unknown:
        raise ValueError(f"{params}: unknown parameters {unknown}; the notebook's are {sorted(notebook_parameters(stem))}")
    return overrides


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


RERUN_EXAMPLE = '-y "seeds: [0, 1, 2, 3]"'
"""The re-run box's example: papermill's -p passes '[0, 1, 2, 3]' as a string, -y as a list (a test
parses it as papermill does and checks it against every chapter's parameters)."""


def provenance_markdown(stem: str, profile: str, wall_s: float, downloads: list[str], error: str | None) -> str:
    """The closing cell of an executed chapter: re-run box, parameters, provenance, downloads."""
    machine = f"{os.cpu_count()} CPUs, {platform.machine()} {platform.system()}, Python {platform.python_version()}"
    machine += f", torch {torch.__version__}"
    defaults = notebook_parameters(stem)
    params = params_file(stem, profile)
    overrides = profile_overrides(stem, profile)
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " with uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    command = f".venv/bin/papermill notebooks/{stem}.ipynb {stem}-out.ipynb --cwd notebooks"
    if params:
        command += f" -f params/{profile}/{stem}.yaml"
    repo = repository()
    launch = ""
    if repo:
        path = f"{repo[0].removeprefix('https://github.com/')}/blob/{repo[1]}/notebooks/{stem}.ipynb"
        binder = (
            f"https://mybinder.org/v2/gh/{repo[0].removeprefix('https://github.com/')}/{repo[1]}?labpath=notebooks/{stem}.ipynb"
        )
        launch = f"\nOr open it in [Binder]({binder}) or [Colab](https://colab.research.google.com/github/{path}).\n"
    rows = "\n".join(
        f"| `{name}` | `{overrides[name]!r}` | `{value}` | {comment} |"
        if name in overrides
        else f"| `{name}` | `{value}` | `{value}` | {comment} |"
        for name, (value, comment) in defaults.items()
    )
    status = f"**This chapter failed:** `{error}`" if error else "The chapter ran to the end."
    links = ", ".join(f"{{download}}`{Path(d).name} <{d}>`" for d in downloads)
    return f"""## Provenance

{status}

:::{{admonition}} Re-run this chapter
:class: tip
From the repository root, after `make install`, this runs the chapter as the book did
(the `{profile}` profile):

```bash
{command}
```

Add `-p NAME VALUE` to change a number or a string and `-y "NAME: VALUE"` for a list, for
example `{RERUN_EXAMPLE}`.
{launch}:::

| parameter | this run | default | note |
| --- | --- | --- | --- |
{rows}

| run | |
| --- | --- |
| profile | `{profile}` |
| toolkit | dpo_toolkit {__version__}, commit `{commit}`{dirty} |
| wall time | {_duration(wall_s)} |
| finished | {datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")} |
| machine | {machine} |

Downloads: {links}.
"""


def read_timings(executed: Path) -> dict[str, dict]:
    """The rows of executed/timings.csv by chapter (empty when there is none)."""
    path = executed / "timings.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        return {row["chapter"]: row for row in csv.DictReader(f)}


def record_timing(executed: Path, stem: str, profile: str, outcome: str, wall_s: float, peak_mib: float) -> None:
    """Keep one row per chapter in executed/timings.csv: its last real run's wall time and kernel peak memory.
    Chapters running at once (run_chapters) update it in turn, under a lock."""
    with (executed / "timings.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_timings(executed)
        fields = ["chapter", "profile", "outcome", "wall_s", "peak_rss_mib"]
        rows[stem] = dict(zip(fields, [stem, profile, outcome, f"{wall_s:.1f}", f"{peak_mib:.0f}"], strict=True))
        with (executed / "timings.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows.values())


def add_answer(nb: nbformat.NotebookNode, stem: str, profile: str, claims_path: Path, error: str | None) -> None:
    """Put the chapter's answer box (``chapter_answer``) right under the title, which is the chapter's
    question (the first line of its first Markdown cell), above the claims' statements and every
    figure, so that it is on the first screen; nothing when the chapter failed or wrote no valid
    claims table."""
    if error:
        return
    try:
        claims = read_claims(claims_path)
    except (OSError, ValueError):  # no table, or a malformed one: the scorecard names the problem
        return
    box = nbformat.v4.new_markdown_cell(answer_markdown(chapter_title(stem), claims, profile))
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), None)
    if first is None:
        nb.cells.insert(0, box)
        return
    title, _, rest = nb.cells[first].source.lstrip().partition("\n")  # the title is the chapter's question
    nb.cells[first].source = title
    nb.cells.insert(first + 1, box)
    if rest.strip():
        nb.cells.insert(first + 2, nbformat.v4.new_markdown_cell(rest.strip("\n")))


def add_alt_text(nb: nbformat.NotebookNode) -> None:
    """Give every figure its caption as alt text (MyST-NB cell metadata `mystnb.figure.caption` →
    `mystnb.image.alt`), so that a screen reader says what the figure shows rather than its file
    name; a cell that sets its own alt text keeps it."""
    for cell in nb.cells:
        mystnb = cell.get("metadata", {}).get("mystnb", {})
        caption = mystnb.get("figure", {}).get("caption")
        if cell.cell_type == "code" and caption and "alt" not in mystnb.get("image", {}):
            mystnb.setdefault("image", {})["alt"] = " ".join(str(caption).split())


def run_chapter(stem: str, profile: str, executed: Path, results: Path) -> str:
    """Run one chapter unless cached; returns 'cached', 'ran' or 'failed'."""
    executed.mkdir(parents=True, exist_ok=True)
    output, key_file, failed_file = executed / f"{stem}.ipynb", executed / f"{stem}.key", executed / f"{stem}.failed"
    key = chapter_key(stem, profile)
    if output.exists() and key_file.exists() and key_file.read_text() == key and not failed_file.exists():
        return "cached"
    overrides = profile_overrides(stem, profile)  # a bad parameter file fails here, before any work
    key_file.unlink(missing_ok=True)
    failed_file.unlink(missing_ok=True)
    os.environ["DPO_RESULTS_ROOT"] = str(results.resolve())
    os.environ.setdefault("DPO_PROGRESS", "0")  # the kernel inherits it: no progress bars in the built chapter
    start, error = time.time(), None
    with PeakMemory() as memory:
        try:
            papermill.execute_notebook(
                str(ROOT / "notebooks" / f"{stem}.ipynb"),
                str(output),
                parameters=overrides,
                cwd=str(ROOT / "notebooks"),
                progress_bar=False,
                log_output=False,
            )
        except Exception as e:  # any failure is reported on the chapter's page and in the scorecard
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    wall_s = time.time() - start
    record_timing(executed, stem, profile, "failed" if error else "ran", wall_s, memory.mib)
    downloads = [f"{stem}.ipynb"]
    target = executed / "downloads" / stem
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted((results / stem).glob("*")):
        if path.is_file() and path.suffix in DOWNLOADABLE:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
            downloads.append(f"downloads/{stem}/{path.name}")
    if output.exists():
        nb = nbformat.read(output, as_version=4)
        add_answer(nb, stem, profile, results / stem / "claims.csv", error)
        add_alt_text(nb)
        nb.cells.append(nbformat.v4.new_markdown_cell(provenance_markdown(stem, profile, wall_s, downloads, error)))
        nbformat.write(nb, output)
    if error:
        failed_file.write_text(error + "\n")
        return "failed"
    key_file.write_text(key)
    return "ran"


def expected_seconds(stems: list[str], profile: str, executed: Path) -> dict[str, float]:
    """Each chapter's expected wall time at `profile`: its last run's (executed/timings.csv), else
    its time in the committed profile benchmark (benchmarks/results/profile.csv), else 0."""
    expected = dict.fromkeys(stems, 0.0)
    committed = ROOT / "benchmarks" / "results" / "profile.csv"
    if committed.exists():
        with committed.open() as f:
            for row in csv.DictReader(f):
                if row["profile"] == profile and row["chapter"] in expected:
                    expected[row["chapter"]] = float(row["chapter_s"])
    for stem, row in read_timings(executed).items():
        if stem in expected and row["profile"] == profile:
            expected[stem] = float(row["wall_s"])
    return expected


def run_chapters(stems: list[str], profile: str, executed: Path, results: Path, jobs: int) -> int:
    """Run the chapters, `jobs` at a time, each in its own process (``chapter STEM``), longest
    expected first so that the last to finish is a short one; returns the number of processes
    that crashed (a chapter that fails is recorded as usual and is not a crash).

    Chapters never share results (each writes results/STEM), and each process keeps the
    machine's thread count, so every number is the one a run on its own gives. OpenMP's
    threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, unless set): spinning threads of
    two processes on one core's worth of work would slow both (docs/timings.md, "Two processes at a time")."""
    expected = expected_seconds(stems, profile, executed)
    pending = sorted(stems, key=lambda stem: -expected[stem])  # stable: ties keep the table-of-contents order
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    running: dict[str, subprocess.Popen] = {}
    crashed = 0
    while pending or running:
        while pending and len(running) < jobs:
            stem = pending.pop(0)
            command = [sys.executable, "-m", "tools.bookbuild", "chapter", stem, "--profile", profile,
                       "--executed", str(executed), "--results", str(results), "--jobs", "1"]  # fmt: skip
            running[stem] = subprocess.Popen(command, cwd=ROOT, env=env)
        time.sleep(0.2)
        for stem, process in list(running.items()):
            if process.poll() is not None:
                del running[stem]
                if process.returncode != 0:
                    crashed += 1
                    print(f"   {stem}: its build process exited with {process.returncode}", file=sys.stderr, flush=True)
    return crashed


def chapter_title(stem: str) -> str:
    """The first '# ' heading of notebooks/<stem>.md."""
    for line in (ROOT / "notebooks" / f"{stem}.md").read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return stem


GROUPS = {
    "tested": "## Claims tested here",
    "inconclusive": "## Inconclusive (the interval straddles its threshold, or fewer than 3 replicates)",
    "untestable": "## Untestable here (the precondition did not hold in this run)",
    "identity": "## Checks of identities and numerics (not reproductions)",
}


def group_of(verdict: str) -> str:
    """'tested', 'inconclusive', 'untestable' or 'identity': the scorecard table a verdict is listed in."""
    return {IDENTITY: "identity", UNTESTABLE: "untestable", INCONCLUSIVE: "inconclusive"}.get(verdict, "tested")


def seed_counts(stems: list[str], profile: str) -> dict[str, int]:
    """The number of training seeds (`seeds`) of each chapter at this profile; chapters without the
    parameter, or without their notebook, are left out."""
    counts = {}
    for stem in stems:
        try:
            seeds = profile_overrides(stem, profile).get("seeds")
            defaults = notebook_parameters(stem)
            if seeds is None and "seeds" in defaults:
                seeds = ast.literal_eval(defaults["seeds"][0])
        except (OSError, ValueError):  # a chapter without its notebook: reported below the matrix
            continue
        if seeds is not None:
            counts[stem] = len(seeds) if isinstance(seeds, list) else 1
    return counts


def seeds_in_words(stems: list[str], profile: str) -> str:
    """How many training seeds the chapters ran at this profile: '3 seeds per chapter' or a range."""
    counts = set(seed_counts(stems, profile).values())
    if not counts:
        return "seeds: none declared"
    low, high = min(counts), max(counts)
    return f"{low} seed{'s' if low > 1 else ''} per chapter" if low == high else f"{low}–{high} seeds per chapter"


def chapter_claims(stem: str, executed: Path, results: Path) -> pd.DataFrame | str:
    """The chapter's claims table, or what went wrong: 'chapter failed: `error`' or 'no claims table: why'."""
    failure = executed / f"{stem}.failed"
    if failure.exists():
        return f"chapter failed: `{failure.read_text().strip()}`"
    try:
        return read_claims(results / stem / "claims.csv")
    except (OSError, ValueError) as e:
        return f"no claims table: {type(e).__name__}: {e}"


def scorecard(stems: list[str], executed: Path, results: Path, profile: str) -> tuple[str, str, bool]:
    """(page, summary line, any chapter failed) from every chapter's claims.csv.

    The page opens with a banner (profile, seeds, commit, date) and a verdict matrix: one row
    per chapter, one coloured badge per claim; below it one short line per claim, linked to
    its chapter, whose claims table holds the long numbers."""
    rows, matrix, problems, counts, failed = {g: [] for g in GROUPS}, [], [], dict.fromkeys(VERDICTS, 0), False
    for stem in stems:
        link = f"{{doc}}`{chapter_title(stem)} <{stem}>`"
        claims = chapter_claims(stem, executed, results)
        if isinstance(claims, str):
            what, why = claims.split(": ", 1)
            failed = failed or what == "chapter failed"
            problems.append(f"- {link}: **{'the chapter failed' if what == 'chapter failed' else what}** ({why}).")
            matrix.append(f"| {link} | {what} |")
            continue
        matrix.append(f"| {link} | " + " ".join(
            badge(c.claim_id, c.verdict, c.statement, href=f"{stem}.html#{claim_anchor(c.claim_id)}") for c in claims.itertuples()
        ) + " |")  # fmt: skip
        for claim in claims.itertuples():
            counts[claim.verdict] += 1
            cells = [claim.claim_id, f"**{claim.verdict}**", claim.statement, link]
            rows[group_of(claim.verdict)].append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    n = sum(counts.values())
    tested = sum(counts[v] for v in TESTED)
    summary = (
        f"{tested} of {n} claims tested: {counts['reproduced']} reproduced, {counts['partly']} partly, "
        f"{counts['not reproduced']} not reproduced; {counts[INCONCLUSIVE]} inconclusive; {counts[UNTESTABLE]} untestable here; "
        f"{counts[IDENTITY]} verified as identities — from {len(stems) - len(problems)} of {len(stems)} chapters"
    )
    if problems:
        summary += f"; {len(problems)} chapter{'s' if len(problems) > 1 else ''} without claims (see the scorecard)"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    banner = (
        f'<div class="scorecard-banner" data-profile="{html.escape(profile)}" style="border-left:6px solid #1a5fb4;'
        f'padding:6px 12px;margin-bottom:1em;background:#f3f6fb">Built at the <b>{html.escape(profile)}</b> profile'
        f" ({html.escape(seeds_in_words(stems, profile))}) from commit <code>{html.escape(commit)}</code> on "
        f"{datetime.date.today().isoformat()}.</div>"
    )
    legend = " ".join(badge(v, v, "the colour of this verdict", kind="verdict-legend") for v in VERDICTS)
    tables = "\n\n".join(
        f"{heading}\n\n| claim | verdict | statement | chapter |\n| --- | --- | --- | --- |\n" + "\n".join(rows[group])
        for group, heading in GROUPS.items()
        if rows[group]
    )
    matrix_table = "| chapter | claims |\n| --- | --- |\n" + "\n".join(matrix)
    page = f"""# Claims scorecard

{banner}

**{summary}.**

{matrix_table}

Badges: {legend}

Every claim of the chapters, with its verdict, computed by code with thresholds fixed in
the toolkit before any run. A claim read on trained models is decided on a 95 % interval
over independent replicates (training seeds; each sets the reference, the initialisation
and the data order): it is *reproduced* or *not reproduced* only when the whole interval
lies on one side of its threshold, and *inconclusive* when the interval straddles it or
rests on fewer than 3 replicates (so the quick profile decides only exact claims). A claim
is *tested* only where its precondition, measured by code, holds; otherwise it is
*untestable here*, not a null result. Checks of an identity or of the numerics are
*verified (identity)* and never count as reproductions. The published value and ours, the
estimate with its interval, replicate count and threshold, and each precondition with what
was measured, are in each chapter's claims table.

{tables}
"""
    if problems:
        page += "\n## Chapters without claims\n\n" + "\n".join(problems) + "\n"
    return page, summary, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bookbuild", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    chapter = sub.add_parser("chapter")
    chapter.add_argument("stems", nargs="+")
    chapter.add_argument("--profile", required=True)
    chapter.add_argument("--jobs", type=int, default=2, help="chapters run at once (default 2; 1: one after another)")
    config = sub.add_parser("config")
    config.add_argument("out", type=Path)
    card = sub.add_parser("scorecard")
    card.add_argument("stems", nargs="+")
    card.add_argument("--profile", required=True)
    for p in (chapter, card):
        p.add_argument("--executed", type=Path, required=True)
        p.add_argument("--results", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "config":
        repo = repository()
        if repo and repo[0] != install_cell.REPOSITORY:  # a fork's Colab button would install the wrong toolkit
            print(f"error: the notebooks' install cell (Colab) installs the toolkit from {install_cell.REPOSITORY}, but this "
                  f"book is built from {repo[0]}: set REPOSITORY in tools/install_cell.py, then run "
                  "`python -m tools.install_cell write` and `make notebooks`", file=sys.stderr)  # fmt: skip
            return 2
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml.safe_dump(book_config(), sort_keys=False, allow_unicode=True))
        return 0
    if args.command == "chapter":
        missing = [stem for stem in args.stems if not (ROOT / "notebooks" / f"{stem}.ipynb").exists()]
        if missing:
            parser.error(f"no notebook for {missing} in notebooks/")
        if args.jobs < 1:
            parser.error(f"--jobs must be ≥ 1, got {args.jobs}")
        args.executed.mkdir(parents=True, exist_ok=True)
        if args.jobs > 1 and len(args.stems) > 1:
            return 1 if run_chapters(args.stems, args.profile, args.executed, args.results, args.jobs) else 0
        for stem in args.stems:
            print(f"== {stem} ({args.profile} profile)", flush=True)
            start = time.time()
            outcome = run_chapter(stem, args.profile, args.executed, args.results)
            print(f"   {stem}: {outcome} ({_duration(time.time() - start)})", flush=True)
        return 0
    page, summary, failed = scorecard(args.stems, args.executed, args.results, args.profile)
    args.executed.mkdir(parents=True, exist_ok=True)
    matrix = [(stem, chapter_title(stem), chapter_claims(stem, args.executed, args.results)) for stem in args.stems]
    intro = intro_markdown(args.profile, seeds_in_words(args.stems, args.profile), summary, matrix)
    for name, text in (("scorecard.md", page), ("scorecard_summary.md", intro)):
        path = args.executed / name
        if not path.exists() or path.read_text() != text:  # unchanged pages keep their mtime: no re-render
            path.write_text(text)
    print(f"scorecard: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
