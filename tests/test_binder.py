"""What can be checked of the Binder configuration without a network: repo2docker's files
(binder/environment.yml for conda, an executable binder/postBuild run in the copied
repository) install the toolkit after the repository is there, with the project's pins."""

import os
import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def test_binder_environment_installs_no_package_before_the_repository_is_copied():
    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert not pip, "pip entries in binder/environment.yml run before repo2docker copies the repository in"


def test_post_build_is_an_executable_script_that_installs_the_toolkit_with_its_pins():
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "set -euo pipefail" in text
    install = next(line for line in text.splitlines() if "pip install" in line)
    args = shlex.split(install)
    assert args[args.index("-c") + 1] == "constraints.txt" and (ROOT / "constraints.txt").exists()
    assert args[-1].startswith(".[") and "book" in args[-1]  # the package with its notebook runtime
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # parses as bash


def test_the_root_environment_stays_the_local_conda_recipe():
    """The root environment.yml installs -e . (for `conda env create` in a checkout); Binder ignores it."""
    assert "-e" in (ROOT / "environment.yml").read_text()
    assert (BINDER / "environment.yml").exists()
