"""One training step of the 30-β sweep, op by op, and what some ways of cutting it buy.

    python -m benchmarks.step_anatomy [--steps 50] [--repeats 3]

The step is the KL sweep's (``benchmarks.sweep_speed``): 30 models batched as one ensemble,
batch 16 pairs, DPO loss, backward, RMSprop. It is measured in one run:

- **op groups**: torch's profiler over `steps` full steps (optimizer included), each op's own
  CPU time in one of four groups: matmuls (``bmm``, ``mm``, ``addmm``), copies and layout
  (``copy_``, ``cat``, ``clone``), the optimizer's update (ops inside ``Optimizer.step``) and
  the rest (elementwise, softmax, LayerNorm, reductions, indexing);
- **without vmap**: the forward and backward of the loss with the ensemble's forward written
  directly on its stacked weights (``stacked_logits``), against the toolkit's
  ``vmap(functional_call)``; both compute the same aten ops, and the run checks that their
  gradients are equal bit for bit, so the difference is vmap's own dispatch cost;
- **compiled**: the same stacked forward under ``torch.compile`` (inductor, which fuses the
  elementwise ops into C++ loops), its compile time, and the largest gradient difference
  from the toolkit's, relative to that gradient's largest entry (the fused kernels add in
  another order, so the trained models' bits would change);
- **fused bias and attention**: the stacked forward with each linear's bias added inside its
  matmul (``baddbmm``) and causal attention as one fused kernel over every member's sequences
  (``scaled_dot_product_attention``, which has no vmap batching rule), another float order;
- **shared prompt**: the toolkit's ensemble forward with each pair's prompt computed once
  (``shared_prompt_batch_loss``: the prompt's 4 tokens through ``Ensemble.extend``, then the
  chosen and the rejected response continuing its attention cache), 12 positions per pair
  instead of 16; the prompt's gradients from the two responses are added before the weight
  gradients are formed, another order of additions, so its bits differ too.

Forward-and-backward times are the best of `repeats` timings of `steps` steps, the ways
alternating within each repeat (this machine's speed drifts over minutes). The compile time is
a cold one: inductor's caches go to a fresh temporary folder. Writes
``_build/benchmarks/step_anatomy.csv`` (the ways of computing the step) and
``_build/benchmarks/step_ops.csv`` (the op groups).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict

import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import profile

from benchmarks.common import fresh_inductor_cache, seconds, write
from benchmarks.sweep_speed import BETAS, DPO, reference_model
from benchmarks.throughput import BATCH, pairs_subset
from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.data import PairSet, collate_pairs
from dpo_toolkit.core.dpo_train import dpo_batch_loss
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.evaluate import pair_logps
from dpo_toolkit.core.losses import dpo_loss, sequence_logps
from dpo_toolkit.core.optim import make_optimizer

MATMULS = {"aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm"}
COPIES = {"aten::copy_", "aten::cat", "aten::clone"}


def stacked_logits(params: dict[str, torch.Tensor], cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """The Transformer's logits (M, batch, seq, vocab) for tokens (batch, seq) shared by the M models of
    stacked weights `params` (an Ensemble's), written without vmap: op for op what
    ``vmap(functional_call)`` runs, so the result and its gradients are the same bits."""
    n_models = params["embed.weight"].shape[0]
    batch, seq = tokens.shape
    d_model, n_heads, d_head = cfg.d_model, cfg.n_heads, cfg.d_head

    def linear(x, name):  # x (M, rows, in) → (M, rows, out)
        return torch.bmm(x, params[f"{name}.weight"].transpose(1, 2)) + params[f"{name}.bias"][:, None]

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:]) * params[f"{name}.weight"][:, None] + params[f"{name}.bias"][:, None]

    resid_pre = params["embed.weight"][:, tokens] + params["pos_embed.weight"][:, None, :seq]  # (M, B, T, D)
    resid_pre = resid_pre.reshape(n_models, batch * seq, d_model)
    q, k, v = linear(layer_norm(resid_pre, "ln1"), "attn.W_QKV").split(d_model, dim=-1)  # 3 × (M, B·T, D)
    q, k, v = (t.view(n_models, batch, seq, n_heads, d_head).transpose(2, 3) for t in (q, k, v))  # (M, B, nh, T, dh)
    scores = q @ k.transpose(-1, -2) / d_head**0.5  # (M, B, nh, T, T)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril()
    z = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (M, B, nh, T, dh)
    resid_mid = resid_pre + linear(z.transpose(2, 3).reshape(n_models, batch * seq, d_model), "attn.W_O")
    hidden = linear(F.gelu(linear(layer_norm(resid_mid, "ln2"), "mlp.0")), "mlp.2")
    resid_post = resid_mid + hidden
    return linear(layer_norm(resid_post, "ln_final"), "unembed").view(n_models, batch, seq, -1)


def fused_stacked_logits(params: dict[str, torch.Tensor], cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """``stacked_logits`` with each linear's bias added inside its matmul (``baddbmm``) and the attention of every
    member's sequences as one fused kernel (``scaled_dot_product_attention``, causal; under vmap it has no batching
    rule): the same function, another float order."""
    n_models, (batch, seq), d_model = params["embed.weight"].shape[0], tokens.shape, cfg.d_model

    def linear(x, name):  # x (M, rows, in) → (M, rows, out), bias + x @ Wᵀ in one kernel
        return torch.baddbmm(params[f"{name}.bias"][:, None], x, params[f"{name}.weight"].transpose(1, 2))

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:]) * params[f"{name}.weight"][:, None] + params[f"{name}.bias"][:, None]

    resid_pre = (params["embed.weight"][:, tokens] + params["pos_embed.weight"][:, None, :seq]).reshape(n_models, -1, d_model)
    q, k, v = linear(layer_norm(resid_pre, "ln1"), "attn.W_QKV").split(d_model, dim=-1)  # 3 × (M, B·T, D)
    q, k, v = (t.reshape(n_models * batch, seq, cfg.n_heads, cfg.d_head).transpose(1, 2) for t in (q, k, v))  # (M·B, nh, T, dh)
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (M·B, nh, T, dh)
    resid_mid = resid_pre + linear(z.transpose(1, 2).reshape(n_models, batch * seq, d_model), "attn.W_O")
    resid_post = resid_mid + linear(F.gelu(linear(layer_norm(resid_mid, "ln2"), "mlp.0")), "mlp.2")
    return linear(layer_norm(resid_post, "ln_final"), "unembed").view(n_models, batch, seq, -1)


def shared_prompt_batch_loss(policies: Ensemble, pairs: PairSet, reference: torch.nn.Module, betas: torch.Tensor):
    """``dpo_train.dpo_batch_loss`` (plain DPO, Park Eq. 2) with each pair's prompt computed once: the prompt
    through ``Ensemble.extend``, then chosen and rejected continuing its cache. Needs prompts of one length."""
    batch = collate_pairs(pairs)  # chosen rows 0..n−1, rejected rows n..2n−1
    prompt_lengths = batch.response_mask.int().argmax(-1)  # first response position of every row
    if prompt_lengths.unique().numel() != 1:
        raise ValueError("shared_prompt_batch_loss needs prompts of one length")
    prompt_len = int(prompt_lengths[0])
    reference_chosen_logps, reference_rejected_logps = pair_logps(reference, batch)  # (n,) each
    n, n_models = len(pairs), len(policies)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        b = batch.select(torch.cat([index, index + n]))  # (2·batch, seq)
        prompt = b.tokens[: len(index), :prompt_len].expand(n_models, -1, -1)  # (M, batch, prompt_len)
        prompt_logits, cache = policies.extend(prompt)  # (M, batch, prompt_len, V); keys/values (M, batch, …)
        cache = tuple(torch.cat([c, c], dim=1) for c in cache)  # chosen and rejected rows share it
        responses = b.tokens[:, prompt_len:].expand(n_models, -1, -1)  # (M, 2·batch, seq − prompt_len)
        response_logits, _ = policies.extend(responses, cache)
        logits = torch.cat([prompt_logits.repeat(1, 2, 1, 1), response_logits], dim=2)  # (M, 2·batch, seq, V)
        policy_chosen_logps, policy_rejected_logps = sequence_logps(logits, b.tokens, b.response_mask).chunk(2, dim=-1)
        losses, _, _ = dpo_loss(
            policy_chosen_logps, policy_rejected_logps, reference_chosen_logps[index], reference_rejected_logps[index], betas
        )  # (M, batch)
        return losses.mean(-1)

    return batch_loss


def op_groups(step, steps: int) -> pd.DataFrame:
    """Own CPU time per step of each op group over `steps` calls of step(i), under torch's profiler."""
    with profile() as prof:
        for i in range(steps):
            step(i)
    events = prof.events()
    optimizer_ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step#")]
    own: dict[str, float] = defaultdict(float)
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        start = event.time_range.start
        if any(lo <= start < hi for lo, hi in optimizer_ranges):
            group = "optimizer update"
        elif event.name in MATMULS:
            group = "matmuls"
        elif event.name in COPIES:
            group = "copies and layout"
        else:
            group = "elementwise, softmax, LayerNorm, reductions, indexing"
        own[group] += event.self_cpu_time_total / 1e6 / steps
    df = pd.DataFrame([{"group": g, "seconds_per_step": s} for g, s in own.items()])
    return df.sort_values("seconds_per_step", ascending=False, ignore_index=True)


def forward_backward(loss, params: dict[str, torch.Tensor], order: list[torch.Tensor]):
    """run(i): the gradients of the summed loss of batch i (of `order`, cyclically), from zero."""

    def run(i: int) -> None:
        for p in params.values():
            p.grad = None
        loss(order[i % len(order)]).sum().backward()

    return run


def cold_compile(forward, run_of) -> tuple[object, float]:
    """torch.compile(forward) and the seconds of its first forward and backward (run_of(compiled)(0)): a cold
    compile, not one served from an earlier run's cache. Its cache folder lives until the process ends, since
    a new batch width recompiles during the timings."""
    fresh_inductor_cache("step_anatomy")
    compile_start = time.perf_counter()
    compiled = torch.compile(forward)
    run_of(compiled)(0)
    return compiled, time.perf_counter() - compile_start


def gradients(run, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradients of run(0), by parameter name."""
    run(0)
    return {name: p.grad.clone() for name, p in params.items()}


def best_seconds(runs: dict, steps: int, repeats: int) -> dict[str, float]:
    """Each run's best time per step over `repeats` timings of `steps` steps, after a warm-up; the runs alternate
    within each repeat, so that a drift of the machine's speed hits every one alike."""
    for run in runs.values():  # warm-up
        for i in range(3):
            run(i)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best.get(name, float("inf")), seconds(lambda run=run: [run(i) for i in range(steps)]) / steps)
    return best


def anatomy_table(grads_of: dict, reference_grads: dict, best: dict[str, float], compile_s: float) -> pd.DataFrame:
    """One row per way of computing the step: its time, whether its gradients are the toolkit's bits, the
    largest gradient difference relative to that gradient's largest entry, its speed-up over the toolkit's."""
    rows = []
    for name, grads in grads_of.items():
        rows.append(
            {
                "way": name,
                "forward_backward_s": best[name],
                "same_bits": all(torch.equal(grads[k], reference_grads[k]) for k in grads),
                "max_rel_grad_diff": max(
                    float((grads[k] - reference_grads[k]).abs().max() / reference_grads[k].abs().max().clamp(min=1e-30))
                    for k in grads
                ),
                "compile_s": compile_s if name.startswith("compiled") else 0.0,
            }
        )
    anatomy = pd.DataFrame(rows)
    anatomy["speedup"] = anatomy["forward_backward_s"].iloc[0] / anatomy["forward_backward_s"]
    anatomy["full_step_s"] = best["full step"]  # the toolkit's whole step, optimizer included
    anatomy["models"], anatomy["batch"] = len(BETAS), BATCH
    return anatomy


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per timing (≥ 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each way; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    if args.steps < 5 or args.repeats < 1:
        parser.error(f"--steps must be ≥ 5 and --repeats ≥ 1, got {args.steps} and {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    args = _arguments(argv)
    pairs = pairs_subset(args.steps * BATCH)
    reference = reference_model()
    policies = Ensemble([copy.deepcopy(reference) for _ in BETAS])
    params, cfg = policies.params, policies.cfg
    betas = torch.tensor([[b] for b in BETAS])  # (M, 1)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).split(BATCH)
    optimizer = make_optimizer(list(params.values()), DPO)

    def run_of(policy):  # the forward and backward of the toolkit's DPO loss with `policy` as the ensemble's forward
        return forward_backward(dpo_batch_loss(policy, pairs, reference, betas), params, order)

    toolkit_forward_backward = run_of(policies)

    def full_step(i: int) -> None:
        toolkit_forward_backward(i)
        optimizer.step()

    compiled, compile_s = cold_compile(partial_stacked(params, cfg), run_of)
    ways = {
        "vmap (the toolkit)": toolkit_forward_backward,
        "without vmap": run_of(partial_stacked(params, cfg)),
        "compiled (torch.compile)": run_of(compiled),
        "fused bias and attention": run_of(lambda tokens: fused_stacked_logits(params, cfg, tokens)),
        "shared prompt": forward_backward(shared_prompt_batch_loss(policies, pairs, reference, betas), params, order),
    }
    reference_grads = gradients(ways["vmap (the toolkit)"], params)
    grads_of = {name: gradients(run, params) for name, run in ways.items()}  # before any optimizer step changes the weights
    best = best_seconds({**ways, "full step": full_step}, args.steps, args.repeats)
    anatomy = anatomy_table(grads_of, reference_grads, best, compile_s)
    groups = op_groups(full_step, args.steps)
    groups["share"] = groups["seconds_per_step"] / groups["seconds_per_step"].sum()
    write(anatomy, "step_anatomy")
    write(groups, "step_ops")
    return anatomy, groups


def partial_stacked(params: dict[str, torch.Tensor], cfg: ModelConfig):
    """tokens → ``stacked_logits(params, cfg, tokens)``, the policy callable dpo_batch_loss takes."""
    return lambda tokens: stacked_logits(params, cfg, tokens)


if __name__ == "__main__":
    main()
