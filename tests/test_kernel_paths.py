"""The cross-CPU check's pieces: which path is the alternative, and the verdict comparison."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dpo_toolkit.core.claims import COLUMNS
from tools.kernel_paths import alternative, compare, default_capability, main


def _claims(folder, chapter, verdicts):
    (folder / chapter).mkdir(parents=True)
    rows = [{"claim_id": c, "statement": "s", "paper_value": "p", "our_value": "o", "verdict": v} for c, v in verdicts.items()]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / chapter / "claims.csv", index=False)


def test_the_cap_is_below_the_machine_s_own_vector_unit():
    assert alternative("AVX512")[1] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert alternative("AVX512_BF16")[1]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert alternative("AVX2")[1]["MKL_ENABLE_INSTRUCTIONS"] == "SSE4_2"
    assert alternative("DEFAULT")[1]["ONEDNN_MAX_CPU_ISA"] == "SSE41"


def test_compare_finds_a_flipped_verdict_and_a_missing_chapter(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _claims(a, "vanishing_gradients", {"C14": "reproduced", "C15": "partly"})
    _claims(b, "vanishing_gradients", {"C14": "partly", "C15": "partly"})
    _claims(a, "grokking", {"C1": "not reproduced"})
    assert compare(a, b) == [
        "grokking: claims.csv in only one of " + f"{a}, {b}",
        "vanishing_gradients C14: reproduced vs partly",
    ]
    assert main(["compare", str(a), str(b)]) == 1


def test_compare_passes_on_equal_verdicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _claims(a, "kl_sweep", {"C4": "partly"})
    _claims(b, "kl_sweep", {"C4": "partly"})
    assert compare(a, b) == []
    assert main(["compare", str(a), str(b)]) == 0
    assert compare(tmp_path / "none", tmp_path / "nothing") != []  # nothing to compare is a failure, not a pass


GRADIENT_HASH = """
import hashlib, torch
import dpo_toolkit  # turns oneDNN off under DPO_REFERENCE_KERNELS=1
from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.losses import sequence_logps
from dpo_toolkit.core.model import build_model
tokens = torch.randint(0, 12, (64, 8), generator=torch.Generator().manual_seed(0))
mask = torch.zeros(64, 8, dtype=torch.bool)
mask[:, -3:] = True
policies = Ensemble([build_model(ModelConfig(), seed) for seed in range(3)])
(-sequence_logps(policies(tokens), tokens, mask).mean()).backward()
print(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in policies.params.values())).hexdigest())
"""


def _gradient_hash(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "MKL_", "ONEDNN_", "OMP_", "DPO_REFERENCE"))}
    result = subprocess.run(
        [sys.executable, "-c", GRADIENT_HASH], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_reference_path_makes_the_gradients_independent_of_the_cpu_dispatch():
    """One ensemble forward and backward, bit for bit: under the Makefile's reference path the
    gradients are the same whether MKL and oneDNN may use this CPU's whole vector unit or are
    capped below it (as on a smaller CPU); without it they differ."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    reference = dict(pair.split("=") for pair in re.search(r"^REFERENCE_PATH := (.*)$", makefile, re.M).group(1).split())
    cap = alternative(default_capability())[1]
    assert _gradient_hash(reference) == _gradient_hash({**reference, **cap})
    assert _gradient_hash({"OMP_NUM_THREADS": "2"}) != _gradient_hash({"OMP_NUM_THREADS": "2", **cap}), (
        "the cap changes nothing on this CPU without the reference path: the check above would prove nothing"
    )
