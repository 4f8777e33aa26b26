"""The benchmark suite's plumbing (never its timings): the Performance page from CSVs, and
the GPT-2 twin that TRL trains."""

from pathlib import Path

import pandas as pd
import pytest

from benchmarks import common, report, report_common, report_float_order, report_time

MACHINE = {"cpu": "Test CPU", "cores": 2, "threads": 2, "torch": "2.13.0"}


def _unpadded(text: str) -> str:
    """text with every Markdown table row written '| a | b |': to_markdown pads cells to their column's width."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|"):
            lines[i] = "| " + " | ".join(cell.strip() for cell in line.strip()[1:-1].split("|")) + " |"
    return "\n".join(lines) + "\n"


def _page(executed) -> str:
    return _unpadded(report.render(executed).read_text())


def _write_suite(folder):
    folder.mkdir(parents=True)
    pd.DataFrame([
        {"method": "toolkit (train_dpo)", "steps": 100, "pairs": 1600, "best_s": 0.5, "pairs_per_s": 3200.0, "vs_trl": 6.4},
        {"method": "TRL DPOTrainer, HF GPT-2", "steps": 100, "pairs": 1600, "best_s": 3.2, "pairs_per_s": 500.0, "vs_trl": 1.0},
    ]).assign(**MACHINE).to_csv(folder / "throughput.csv", index=False)  # fmt: skip
    common = {"steps": 100, "mflop_per_pair_update": 10.0, "peak_gflops": 200.0}
    pd.DataFrame([
        {"method": "batched ensemble (train_dpo_ensemble)", "betas_timed": 30, "seconds_30_betas": 10.0,
         "pair_updates_per_s": 4800.0, "batched_speedup": 1.0, "gflops": 48.0, "fraction_of_peak": 0.24, **common},
        {"method": "plain per-β loop (train_dpo)", "betas_timed": 2, "seconds_30_betas": 30.0,
         "pair_updates_per_s": 1600.0, "batched_speedup": 3.0, "gflops": 16.0, "fraction_of_peak": 0.08, **common},
        {"method": "TRL DPOTrainer per β", "betas_timed": 2, "seconds_30_betas": 120.0,
         "pair_updates_per_s": 400.0, "batched_speedup": 12.0, "gflops": 4.0, "fraction_of_peak": 0.02, **common},
    ]).assign(**MACHINE).to_csv(folder / "sweep_speed.csv", index=False)  # fmt: skip
    by_models = [{"axis": "models (β)", "size": m, "pairs": 800, "seconds": m / 10, "pair_updates_per_s": 8e3} for m in (1, 2, 4)]
    by_data = [{"axis": "training pairs (30 β, one epoch)", "size": n, "pairs": n, "seconds": n / 100, "pair_updates_per_s": 3e3}
               for n in (100, 200)]  # fmt: skip
    pd.DataFrame(by_models + by_data).assign(**MACHINE).to_csv(folder / "scaling.csv", index=False)
    evaluation = {"peak_gflops": 200.0, "models": 30, "test_prompts": 201, "kl_samples": 4}
    pd.DataFrame([
        {"part": "whole evaluation (Evaluator.__call__)", "seconds": 2.0, "gflop": 40.0, "gflops": 20.0, "fraction_of_peak": 0.1},
        {"part": "greedy answers (KV-cached decoding)", "seconds": 0.5, "gflop": 1.0, "gflops": 2.0, "fraction_of_peak": 0.01},
        {"part": "KL: sampling and scoring", "seconds": 1.0, "gflop": 30.0, "gflops": 30.0, "fraction_of_peak": 0.15},
    ]).assign(**evaluation, **MACHINE).to_csv(folder / "eval_speed.csv", index=False)  # fmt: skip


def test_performance_page_quotes_every_ratio_and_judges_each_target(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    _write_suite(fresh)
    monkeypatch.setattr(report_common, "SOURCES", (fresh, tmp_path / "committed"))
    page = report.render(tmp_path / "executed")
    text = _unpadded(page.read_text())
    assert "Test CPU, 2 cores, torch 2.13.0 on 2 threads" in text
    assert "| one model vs TRL | ≥ 5 | **met** (6.40 ≥ 5) |" in text
    assert "The batched sweep trains 3.0× faster than a per-β loop of the toolkit and 12.0× TRL run one β after" in text
    assert "| sweep vs TRL |" not in text  # quoted, not judged: not a target of the speed issue
    assert "| fraction of peak | ≥ 0.45 | **not met** (0.24 < 0.45) |" in text
    assert "A whole evaluation runs at 10% of the peak; training runs at 24% (the sweep above)" in text
    assert "The furthest from it is greedy answers (KV-cached decoding) (1%)" in text
    assert "(201 test prompts, 4 KL samples each" in text
    assert "Not measured yet: run `python -m benchmarks.peak`" in text  # no peak.csv: its section says so
    assert "## Replicates as members\n\nNot measured yet: run `python -m benchmarks.replicates`" in text
    assert (tmp_path / "executed" / "performance" / "scaling.png").stat().st_size > 1000
    before = page.stat().st_mtime_ns
    report.render(tmp_path / "executed")
    assert page.stat().st_mtime_ns == before  # unchanged inputs leave the page untouched


def _profile_rows(seconds_by_chapter: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = []
    for chapter, seconds in seconds_by_chapter.items():
        total = sum(seconds.values())
        rows += [{"chapter": chapter, "profile": "quick", "category": c, "seconds": s, "share": s / total, "chapter_s": total}
                 for c, s in seconds.items()]  # fmt: skip
    return pd.DataFrame(rows).assign(**MACHINE)


def test_performance_page_opens_with_the_book_time_and_shows_where_it_goes(tmp_path, monkeypatch):
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    fresh.mkdir()
    committed.mkdir()
    _profile_rows({"grokking": {"training": 20.0, "sampling": 10.0}, "ches": {"training": 50.0, "other": 10.0}}).to_csv(
        fresh / "profile.csv", index=False
    )
    _profile_rows({"grokking": {"training": 20.0, "sampling": 40.0}, "ches": {"training": 80.0, "other": 10.0}}).assign(
        commit="abc1234", source="benchmarks.profile at commit abc1234"
    ).to_csv(committed / "profile_baseline.csv", index=False)
    monkeypatch.setattr(report_common, "SOURCES", (fresh, committed))
    monkeypatch.setattr(common, "stems", lambda: ["grokking", "ches"])
    text = _page(tmp_path / "executed")
    assert text.startswith("# Performance\n\n**The whole book's computation from scratch: 1.5 min at the quick")
    assert "| grokking | 20.0 | 10.0 | 0.0 | 30.0 |" in text  # training, sampling, other, total
    assert "| quick | grokking | 60.0 | 30.0 |  | not recorded |" in text  # no claims kept: no speed-up claimed
    assert "| quick | all chapters |" not in text

    def claims(rows):
        return pd.DataFrame(rows, columns=["chapter", "claim_id", "verdict", "our_value"]).assign(profile="quick", **MACHINE)

    claims([("grokking", "C1", "partly", "14 %"), ("ches", "C11", "reproduced", "0.8")]).assign(commit="abc1234").to_csv(
        committed / "profile_baseline_claims.csv", index=False
    )
    grown = [("grokking", "C1", "partly", "14 %"), ("ches", "C11", "reproduced", "0.8"), ("ches", "C11-phrases", "partly", "2")]
    claims(grown).to_csv(fresh / "profile_claims.csv", index=False)
    text = _page(tmp_path / "executed")
    assert "| quick | grokking | 60.0 | 30.0 | 2.00 | same claims |" in text
    assert "| quick | ches | 90.0 | 60.0 |  | more work now: + C11-phrases |" in text  # more work is not a speed-up
    assert "| quick | the 1 chapter with the same claims | 60.0 | 30.0 | 2.00 |  |" in text
    claims([("grokking", "C1", "partly", "14 %"), ("ches", "C11", "reproduced", "0.81")]).to_csv(
        fresh / "profile_claims.csv", index=False
    )
    text = _page(tmp_path / "executed")
    assert "| quick | ches | 90.0 | 60.0 | 1.50 | same claims and verdicts, 1 of 1 values differ |" in text
    assert "| quick | all chapters | 150.0 | 90.0 | 1.67 |  |" in text
    assert "`make book` from scratch" not in text  # no book.csv: no wall-time sentence
    walls = [
        ("paper", "fresh paper run, 2 chapters at once (benchmarks.book --run paper --jobs 2)", 600.0),
        ("quick", "fresh quick run, one chapter at a time (benchmarks.book --run quick --jobs 1)", 90.0),
        ("quick", "fresh quick run, 2 chapters at once (benchmarks.book --run quick --jobs 2)", 60.0),
        ("quick", "fresh quick run (benchmarks.book --run-quick)", 500.0),
    ]  # an older format: not quoted
    pd.DataFrame([{"source": src, "profile": p, "chapter": "all chapters", "outcome": "ran", "wall_s": w, "peak_rss_mib": 1.0}
                  for p, src, w in walls]).to_csv(fresh / "book.csv", index=False)  # fmt: skip
    text = _page(tmp_path / "executed")
    assert text.startswith("# Performance\n\n**The whole book at paper scale: 10 min on a 2-core Test CPU** (`make book` from "
                           "scratch, 2 chapters at once).\n\n**The whole book's computation")  # fmt: skip
    assert ("`make book` from scratch, wall time: paper profile 10.0 min (2 chapters at once); quick profile "
            "1.5 min (one chapter at a time), 1.0 min (2 chapters at once). No GPU") in text  # fmt: skip
    paper_target = "| paper book from scratch, its chapters (min), ≥ 8 replicates per claim | ≤ 60 |"
    assert f"{paper_target} **not met**: not measured at ≥ 8 replicates (10.0 min, replicates not recorded) |" in text
    book = pd.read_csv(fresh / "book.csv").assign(date="2026-12-01", replicates=3)
    book.to_csv(fresh / "book.csv", index=False)
    text = _page(tmp_path / "executed")
    assert "(`make book` from scratch, 2 chapters at once, measured 2026-12-01).\n\n" in text
    assert f"{paper_target} **not met**: not measured at ≥ 8 replicates (10.0 min, at 3 replicates, 2026-12-01) |" in text
    assert "| quick book from scratch, its chapters (min) | ≤ 2 | **met** (1.0 ≤ 2) |" in text  # the fastest fresh run
    book.assign(replicates=8).to_csv(fresh / "book.csv", index=False)
    assert f"{paper_target} **met** (10.0 ≤ 60) |" in _page(tmp_path / "executed")  # enough replicates: judged on time
    assert report_time.time_verdict(56.4, 15) == "**not met** (56.4 > 15)"
    pd.read_csv(fresh / "profile.csv").assign(date="2026-12-01").to_csv(fresh / "profile.csv", index=False)
    assert "1.5 min at the quick profile (measured 2026-12-01)" in _page(tmp_path / "executed")
    monkeypatch.setattr(common, "stems", lambda: ["grokking", "ches", "kl_sweep"])
    text = _page(tmp_path / "executed")
    assert "at the quick profile 2 of 3 chapters measured so far" in text  # never a total over some chapters only
    assert "- quick: benchmarks.profile at commit abc1234\n" in text
    baseline = pd.read_csv(committed / "profile_baseline.csv")
    baseline[baseline["chapter"] == "grokking"].to_csv(committed / "profile_baseline.csv", index=False)
    text = _page(tmp_path / "executed")
    assert "- quick: benchmarks.profile at commit abc1234; no time before for ches\n" in text
    assert "| quick | the 1 chapter with the same claims | 60.0 | 30.0 | 2.00 |  |" in text  # not "all chapters"


def test_two_profiled_runs_compare_by_their_claims():
    def claims(*rows):
        return pd.DataFrame(rows, columns=["claim_id", "verdict", "our_value"])

    before = claims(("C1", "partly", "14 %"), ("C2", "not reproduced", "13 %"))
    assert report_time.compare_work(before, before.copy()) == "same claims"
    assert report_time.compare_work(before, claims(("C2", "not reproduced", "13 %"), ("C1", "partly", "14 %"))) == "same claims"
    assert report_time.compare_work(before, claims(("C1", "partly", "15 %"), ("C2", "not reproduced", "13 %"))) == (
        "same claims and verdicts, 1 of 2 values differ"
    )
    assert report_time.compare_work(before, claims(("C1", "reproduced", "14 %"), ("C2", "partly", "13 %"))) == (
        "same claims, 2 of 2 verdicts differ"
    )
    grown = claims(("C1", "partly", "14 %"), ("C2", "not reproduced", "13 %"), ("C2-drift", "partly", "1"))
    assert report_time.compare_work(before, grown) == "more work now: + C2-drift"
    assert report_time.compare_work(before, claims(("C1", "partly", "14 %"))) == "− C2"
    assert report_time.compare_work(None, before) == "not recorded"
    assert report_time.compare_work(before, claims()) == "not recorded"


def _gpu_run(folder, outcomes: dict[str, str], verdicts: dict[str, str], busy=(50, 100)):
    """A gpu_book.sh output folder: summary, utilisation samples, profiles of the chapters that ran, their claims."""
    (folder / "results").mkdir(parents=True)
    lines = ["Mon Nov 30 18:46:29 UTC 2026", "NVIDIA H200, 580.159.04, 143771 MiB", "torch 2.11.0+cu130 cuda 13.0 True",
             "model name\t: Test CPU", "16", "tests/test_cuda.py, tests/test_device.py: exit 0"]  # fmt: skip
    for chapter, outcome in outcomes.items():
        lines.append(f"{chapter}: {outcome}, 77.7 s after the start")
        if outcome == "ran":
            rows = _profile_rows({chapter: {"training": 60.0, "other": 30.0}}).assign(profile="paper", device="cuda (H200)")
            rows.to_csv(folder / f"profile_gpu_{chapter}.csv", index=False)
            (folder / "results" / chapter).mkdir()
            pd.DataFrame({"claim_id": list(verdicts), "statement": "s", "paper_value": "p", "our_value": "v",
                          "verdict": list(verdicts.values()), "precondition": "none"}).to_csv(
                folder / "results" / chapter / "claims.csv", index=False)  # fmt: skip
    (folder / "summary.txt").write_text("\n".join([*lines, "whole book: 80.0 s wall"]) + "\n")
    samples = "".join(f"2026/11/30 18:47:0{i}.1, {b} %, {100 * (i + 1)} MiB\n" for i, b in enumerate(busy))
    (folder / "gpu_utilisation.csv").write_text("timestamp, utilization.gpu [%], memory.used [MiB]\n" + samples)


def test_a_gpu_run_is_collected_and_its_verdicts_set_beside_the_cpu_ones(tmp_path, monkeypatch):
    from benchmarks import gpu_book

    out = tmp_path / "out"
    monkeypatch.setattr(gpu_book, "OUT", out)
    monkeypatch.setattr(gpu_book, "stems", lambda: ["grokking", "ches"])
    monkeypatch.setattr(common, "stems", lambda: ["grokking", "ches"])
    _gpu_run(tmp_path / "run1", {"grokking": "ran", "ches": "stopped at the 50 s budget"}, {"C1": "partly", "C2": "reproduced"})
    _gpu_run(tmp_path / "run2", {"ches": "failed (exit 1)"}, {}, busy=(20, 40))
    gpu_book.main(["collect", str(tmp_path / "run1"), str(tmp_path / "run2")])
    runs = pd.read_csv(out / "gpu_book.csv").set_index("chapter")
    assert runs.loc["grokking", "wall_s"] == 90.0 and runs.loc["grokking", "outcome"] == "ran"  # the profile's own time
    assert runs.loc["ches", "outcome"] == "failed (exit 1)" and runs.loc["ches", "run"] == 2  # the later run replaces
    assert runs.loc["grokking", "gpu_busy_mean"] == 0.75 and runs.loc["ches", "gpu_busy_mean"] == 0.30
    assert runs.loc["grokking", "gpu_memory_peak_mib"] == 200 and runs.loc["grokking", "processes_sharing_gpu"] == 2
    cpu = tmp_path / "cpu"
    (cpu / "grokking").mkdir(parents=True)
    claims = {"claim_id": ["C1", "C2"], "statement": "s", "paper_value": "p", "our_value": ["v", "w"],
              "verdict": ["partly", "not reproduced"], "precondition": "none"}  # fmt: skip
    pd.DataFrame(claims).to_csv(cpu / "grokking" / "claims.csv")
    gpu_book.main(["claims", str(cpu)])
    monkeypatch.setattr(report_common, "SOURCES", (out,))
    text = _page(tmp_path / "executed")
    assert "On the GPU: on one NVIDIA H200, 1 of 2 chapters finished, in at most 1.5 min each" in text
    assert "| 1 | grokking |  | 90 | 2 | 75% | 200 |" in text
    assert "| 2 | ches |  | failed (exit 1) after 78 | 1 | 30% | 200 |" in text
    assert "Of the 2 claims of the chapters that finished on the GPU, 1 got the same verdict" in text
    assert "| grokking | C2 | not reproduced | reproduced | w | v |" in text


def test_a_csv_from_an_older_suite_is_named_in_the_error(tmp_path, monkeypatch):
    folder = tmp_path / "fresh"
    folder.mkdir()
    pd.DataFrame({"phase": ["x"], "seconds": [1.0]}).to_csv(folder / "sweep_speed.csv", index=False)
    monkeypatch.setattr(report_common, "SOURCES", (folder,))
    with pytest.raises(ValueError, match=r"sweep_speed\.csv.*benchmarks\.sweep_speed"):
        report.render(tmp_path / "executed")


def test_the_gpt2_twin_tokenizes_characters_and_has_the_toolkit_shape():
    pytest.importorskip("transformers")
    from benchmarks.throughput import _gpt2_batch, hf_model, hf_tokenizer
    from dpo_toolkit.core.data import VOCAB, PairSet

    tokenizer = hf_tokenizer()
    assert tokenizer("123=")["input_ids"] == [VOCAB.index(c) for c in "123="]
    model = hf_model()
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head, model.config.n_inner) == (1, 128, 4, 128)
    assert model.config.vocab_size == len(VOCAB) + 2
    ids, mask = _gpt2_batch(tokenizer, PairSet([12, 7], [13, 8], [15, 10]))
    assert ids.shape[0] == 4
    assert tokenizer.decode(ids[0][mask[0]]).replace(" ", "") == "13.<eos>"
    assert tokenizer.decode(ids[3][mask[3]]).replace(" ", "") == "10.<eos>"
    assert not mask[:, :2].any()


def test_profiled_chapter_source_takes_the_books_parameter_reading():
    from benchmarks.profile import chapter_source

    source = chapter_source("kl_sweep", "paper", {"seeds": [0]})
    assert "\nn_betas = 30\n" in source  # params/paper/kl_sweep.yaml
    assert source.index("n_betas: int = 8") < source.index("n_betas = 30") < source.index("seeds = [0]")
    assert "n_betas = " not in chapter_source("kl_sweep", "quick").split("n_betas: int = 8", 1)[1].split("check_parameters")[0]
    with pytest.raises(ValueError, match=r"has no parameter \['beta'\]"):
        chapter_source("kl_sweep", "quick", {"beta": 0.1})  # kl_sweep declares n_betas, beta_min, beta_max; not beta


def test_a_profile_at_another_commit_passes_on_every_other_argument():
    from benchmarks.profile_at import without_options

    argv = ["grokking", "--at", "7b0f35d", "--profile", "paper", "--csv=profile_baseline", "--set", "seeds=[0]"]
    assert without_options(argv, ("--at", "--csv")) == ["grokking", "--profile", "paper", "--set", "seeds=[0]"]
    assert without_options(["--at=abc", "--flops"], ("--at", "--csv")) == ["--flops"]


def test_a_profile_keeps_the_claims_its_chapter_computed(tmp_path):
    from benchmarks.profile import chapter_claims

    (tmp_path / "grokking").mkdir()
    pd.DataFrame({"claim_id": ["C1", "C2"], "statement": ["s1", "s2"], "paper_value": ["p", "p"], "our_value": ["14 %", "13 %"],
                  "verdict": ["partly", "not reproduced"], "precondition": ["none", "none"]}).to_csv(
        tmp_path / "grokking" / "claims.csv", index=False)  # fmt: skip
    kept = chapter_claims(tmp_path, "grokking", "quick")
    assert kept.to_dict("records") == [
        {"chapter": "grokking", "profile": "quick", "claim_id": "C1", "verdict": "partly", "our_value": "14 %"},
        {"chapter": "grokking", "profile": "quick", "claim_id": "C2", "verdict": "not reproduced", "our_value": "13 %"},
    ]
    assert chapter_claims(tmp_path, "ches", "quick").empty  # a chapter that wrote no claims


def test_profile_charges_each_category_its_own_flops_and_time():
    """Nested wrapped calls: the outer category gets its own matmul's FLOPs, not the inner call's."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.profile_attribution import Attribution

    with FlopCounterMode(display=False) as counter:
        attribution = Attribution(counter)
        inner = attribution.wrap(lambda: torch.ones(2, 3) @ torch.ones(3, 5), "inner")  # 2·2·3·5 = 60 FLOPs

        def outer_fn():
            inner()
            inner()
            return torch.ones(4, 8) @ torch.ones(8, 16)  # 2·4·8·16 = 1024 FLOPs

        attribution.wrap(outer_fn, "outer")()
    assert dict(attribution.flops) == {"inner": 120, "outer": 1024}
    assert attribution.total_flops() == 1144
    assert set(attribution.seconds) == {"inner", "outer"} and min(attribution.seconds.values()) >= 0
    assert Attribution().total_flops() == 0  # no counter: times only


def test_the_ensemble_forward_without_vmap_is_the_same_bits_as_the_toolkits():
    """benchmarks.step_anatomy times vmap's dispatch cost by this rewrite: it must compute what the Ensemble does."""
    import torch

    from benchmarks.step_anatomy import stacked_logits
    from dpo_toolkit.core.config import ModelConfig
    from dpo_toolkit.core.ensemble import Ensemble
    from dpo_toolkit.core.model import build_model

    cfg = ModelConfig(d_model=16, n_heads=2, d_mlp=24)
    ensemble = Ensemble([build_model(cfg, seed) for seed in range(3)])
    tokens = torch.randint(0, cfg.d_vocab, (5, cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    weights = torch.randn(3, 5, cfg.n_ctx, cfg.d_vocab, generator=torch.Generator().manual_seed(1))

    def gradients(logits_of):
        for p in ensemble.params.values():
            p.grad = None
        logits = logits_of(tokens)
        (logits * weights).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in ensemble.params.items()}

    toolkit_logits, toolkit_grads = gradients(ensemble)
    stacked, stacked_grads = gradients(lambda t: stacked_logits(ensemble.params, cfg, t))
    assert torch.equal(stacked, toolkit_logits)
    assert all(torch.equal(stacked_grads[k], toolkit_grads[k]) for k in toolkit_grads)


def test_the_shared_prompt_loss_is_the_toolkits_dpo_loss_up_to_float_rounding():
    """benchmarks.step_anatomy's shared-prompt step: same losses and gradients as dpo_train.dpo_batch_loss, to float tolerance."""
    import numpy as np
    import pytest
    import torch

    from benchmarks.step_anatomy import shared_prompt_batch_loss
    from dpo_toolkit.core.config import ModelConfig
    from dpo_toolkit.core.data import PairSet
    from dpo_toolkit.core.dpo_train import dpo_batch_loss
    from dpo_toolkit.core.ensemble import Ensemble
    from dpo_toolkit.core.model import build_model

    cfg = ModelConfig(d_model=16, n_heads=2, d_mlp=24)
    rng = np.random.default_rng(0)
    pairs = PairSet(rng.integers(100, 999, 6), rng.integers(0, 999, 6), rng.integers(0, 99, 6))  # answers of 1–3 digits
    reference = build_model(cfg, 9).requires_grad_(False)
    ensemble = Ensemble([build_model(cfg, seed) for seed in range(3)])
    betas = torch.tensor([[0.1], [0.5], [1.0]])
    index = torch.tensor([4, 0, 2])

    def loss_and_grads(batch_loss):
        for p in ensemble.params.values():
            p.grad = None
        loss = batch_loss(index)
        loss.sum().backward()
        return loss.detach(), {name: p.grad.clone() for name, p in ensemble.params.items()}

    toolkit_loss, toolkit_grads = loss_and_grads(dpo_batch_loss(ensemble, pairs, reference, betas))
    shared_loss, shared_grads = loss_and_grads(shared_prompt_batch_loss(ensemble, pairs, reference, betas))
    assert toolkit_loss.shape == (3,)
    torch.testing.assert_close(shared_loss, toolkit_loss, rtol=1e-5, atol=1e-6)
    for name, grad in toolkit_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one length"):
        shared_prompt_batch_loss(ensemble, PairSet(np.array([5, 500]), np.array([5, 500]), np.array([6, 501])), reference, betas)


def test_the_float_order_section_counts_equal_verdicts_and_lists_the_others(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.setattr(report_common, "SOURCES", (fresh, tmp_path / "committed"))
    assert "Not measured yet under the interval rules" in _unpadded("".join(report_float_order.float_order_verdicts()))
    cpu = pd.DataFrame({"chapter": ["kl_sweep", "kl_sweep", "surgery"], "claim_id": ["C4", "C5", "C7"],
                        "verdict": ["reproduced", "not reproduced", "partly"], "our_value": ["a", "b", "c"]})  # fmt: skip
    cpu.to_csv(fresh / "claims_cpu.csv", index=False)
    cpu.assign(verdict=["partly", "not reproduced", "partly"], our_value=["a2", "b", "c"]).to_csv(
        fresh / "claims_cpu_reference.csv", index=False
    )
    text = _unpadded("".join(report_float_order.float_order_verdicts()))
    assert "**2 of the 3 verdicts were the same** (the chapters that ran: kl_sweep, surgery)." in text  # not every chapter
    assert "| kl_sweep | C4 | reproduced | partly | a | a2 |" in text
    assert "| C5 |" not in text and "| C7 |" not in text


def test_the_interval_float_order_section_lists_every_verdict_and_counts_decisive_flips(tmp_path, monkeypatch):
    monkeypatch.setattr(report_common, "SOURCES", (tmp_path,))
    evidence = {"n": [3, 3, ""], "estimate": [0.9, 0.4, ""], "ci_low": [0.8, 0.1, ""], "ci_high": [1.0, 0.7, ""],
                "threshold": [0.5, 0.5, ""]}  # fmt: skip
    default = pd.DataFrame({"chapter": ["grokking", "grokking", "mixture_tpm"], "claim_id": ["C1", "C2", "C17"],
                            "verdict": ["reproduced", "inconclusive", "verified (identity)"], **evidence})  # fmt: skip
    default.to_csv(tmp_path / "claims_paper_default.csv", index=False)
    default.assign(verdict=["inconclusive", "not reproduced", "verified (identity)"]).to_csv(
        tmp_path / "claims_paper_perturbed.csv", index=False
    )
    text = _unpadded("".join(report_float_order.float_order_verdicts()))
    assert "**1 of the 3 verdicts are the same; 0 differ between two decisive verdicts.** Every verdict" in text
    assert "| grokking | C1 | reproduced | 0.9 [0.8, 1] (3) | inconclusive | 0.9 [0.8, 1] (3) |" in text
    assert "| mixture_tpm | C17 | verified (identity) |  | verified (identity) |  |" in text
    # C1 re-measured on ten replicates under the own kernels only: listed, not counted as a float-order pair
    default.assign(n=[10, 3, ""]).to_csv(tmp_path / "claims_paper_default.csv", index=False)
    text = _unpadded("".join(report_float_order.float_order_verdicts()))
    assert "**1 of the 2 verdicts are the same; 0 differ between two decisive verdicts.**" in text
    assert "Not compared, since their runs rest on different numbers of replicates: C1 (10 seeds under the own" in text


def test_a_page_table_writes_each_cell_as_formatted_and_never_reparses_it():
    df = pd.DataFrame({"name": ["a", "b"], "x": [1600.0, float("nan")], "label": ["60.0", "1,600"], "n": [3, 4]})
    text = report_common.table(df, {"name": "name", "x": "x (s)", "label": "label", "n": "n"}, {"x": ",.0f"})
    header, rule, *rows = text.splitlines()
    assert text.endswith(" |\n") and set(rule) <= set("|:- ")
    assert _unpadded("\n".join([header, *rows])).splitlines() == [
        "| name | x (s) | label | n |",
        "| a | 1,600 | 60.0 | 3 |",  # a string that reads as a number is kept as written
        "| b |  | 1,600 | 4 |",  # no value: an empty cell
    ]


def test_no_benchmark_module_is_over_300_lines():
    folder = Path(report.__file__).parent
    lengths = {path.name: len(path.read_text().splitlines()) for path in folder.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 300} == {}


def test_a_profile_at_another_commit_merges_its_rows_and_claims_into_the_named_csvs(tmp_path, monkeypatch):
    from benchmarks import profile

    monkeypatch.setattr(common, "OUT", tmp_path)
    monkeypatch.setattr(profile, "OUT", tmp_path)
    rows = _profile_rows({"grokking": {"training": 1.0}}).drop(columns=list(MACHINE)).assign(commit="abc1234", source="s")
    claims = pd.DataFrame({"chapter": ["grokking"], "profile": ["quick"], "claim_id": ["C1"], "verdict": ["partly"],
                           "our_value": ["1"], "commit": ["abc1234"]})  # fmt: skip
    calls = []

    def at(commit, argv, csv):  # benchmarks.profile_at.profile_at without the subprocess
        calls.append((commit, argv, csv))
        return csv, rows, claims

    monkeypatch.setattr(profile, "profile_at", at)
    argv = ["grokking", "--profile", "quick", "--at", "abc1234", "--csv", "profile_baseline"]
    profile.main(argv)
    assert calls == [("abc1234", argv, "profile_baseline")]
    assert pd.read_csv(tmp_path / "profile_baseline.csv")[["chapter", "commit"]].values.tolist() == [["grokking", "abc1234"]]
    assert pd.read_csv(tmp_path / "profile_baseline_claims.csv")["claim_id"].tolist() == ["C1"]


def test_the_replicates_section_quotes_each_layout_and_its_speedup(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    rows = [("DPO training", "one ensemble per seed", 8.0, 1.0), ("DPO training", "replicates as members", 6.4, 1.25)]
    pd.DataFrame([{"phase": p, "layout": lay, "seconds": s, "speedup_of_members": x, "seeds": 3, "betas": 10, "steps": 100}
                  for p, lay, s, x in rows]).assign(**MACHINE).to_csv(fresh / "replicates.csv", index=False)  # fmt: skip
    monkeypatch.setattr(report_common, "SOURCES", (fresh, tmp_path / "committed"))
    text = _unpadded(report.render(tmp_path / "executed").read_text())
    assert "(10 β, RMSprop, batch 16) over 3 seeds, each with its own reference, 100 steps" in text
    assert "| DPO training | replicates as members | 6.40 | 1.25 |" in text


def test_merging_the_update_axis_reads_back_its_runs_verdicts_and_refuses_overlapping_tasks(tmp_path):
    """The stored per-run reads and mass flows of the KL sweep's task, read back through `merge`, give the
    claims that `combine` wrote from the runs themselves (a lost '' collapse label would read every run
    as collapsed); two dirs of one task are refused."""
    from benchmarks import drift_updates

    kl = drift_updates.ROOT / "benchmarks" / "results" / "drift_updates_kl_paper"
    drift_updates.main(["merge", "--dirs", str(kl), "--out", str(tmp_path / "kl")])
    columns = ["claim_id", "verdict", "our_value"]
    assert pd.read_csv(tmp_path / "kl" / "claims.csv")[columns].equals(pd.read_csv(kl / "claims.csv")[columns])
    with pytest.raises(SystemExit, match="overlap"):
        drift_updates.main(["merge", "--dirs", str(kl), str(kl), "--out", str(tmp_path / "twice")])


def test_the_long_runs_section_quotes_each_way_and_compounds_the_best_with_members(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    ways = [("the toolkit", 176.0, 1.0, 0.0, 0.0, 0.0, 0.0, True),
            ("compiled forward", 160.0, 1.1, 20.0, 800.0, 0.07, 2e-6, False)]  # fmt: skip
    pd.DataFrame([{"way": w, "ms_per_step": ms, "speedup": x, "compile_s": c, "break_even_updates": b, "run_saving": r,
                   "max_rel_grad_diff": d, "same_bits": same, "members": 100, "run_updates": 7560}
                  for w, ms, x, c, b, r, d, same in ways]).assign(**MACHINE)\
        .to_csv(fresh / "long_runs.csv", index=False)  # fmt: skip
    monkeypatch.setattr(report_common, "SOURCES", (fresh, tmp_path / "committed"))
    text = _unpadded(report.render(tmp_path / "executed").read_text())
    assert "| compiled forward | 160.0 | 1.10 | 20 | 800 | 7% | 2.0e-06 | False |" in text
    assert "The faster of these two buys 1.10× on a training step" in text  # no replicates.csv: no compounding
    pd.DataFrame([{"phase": "DPO training", "layout": lay, "seconds": s, "speedup_of_members": x, "seeds": 3, "betas": 10,
                   "steps": 100} for lay, s, x in [("one ensemble per seed", 8.0, 1.0), ("replicates as members", 6.4, 1.25)]]
                 ).assign(**MACHINE).to_csv(fresh / "replicates.csv", index=False)  # fmt: skip
    text = _unpadded(report.render(tmp_path / "executed").read_text())
    assert "the faster of these two together buy 1.38× on a training step" in text  # 1.25 × 1.10
