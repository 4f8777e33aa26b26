"""The levers left for the paper profile's longest runs, measured on their shape.

    python -m benchmarks.long_runs [--members 100] [--steps 40] [--repeats 2]

Most of the paper book's time goes to its 30-epoch drifting arms (the KL sweep's 10 β × 10 seeds,
CHES's C21-drift, the drift map's update axis on §4.2's task): ensembles of about 100 members taking
7,560 updates each on the KL sweep's task at Park's full size (S = [100, 500], W = 10, batch 16,
RMSprop 5e-4). On that shape, in one run (each way warmed up, then the best of `repeats` timings of
`steps` steps, the ways alternating), one whole DPO step (forward, backward, optimizer), three ways:

- **the toolkit**: ``dpo_batch_loss`` on the ``Ensemble`` (vmap), torch's RMSprop (foreach) over the
  stacked weights;
- **compiled forward**: the same with the ensemble's forward under ``torch.compile`` (inductor): its
  cold compile time, the updates after which it has paid for it, and the largest gradient
  difference relative to that gradient's largest entry (a new float order);
- **flat optimizer buffer**: every stacked weight a view of one buffer and every gradient a view of
  another, so that RMSprop steps one tensor (fewer kernels; gradients are added into the buffer
  instead of handed over, one more pass over them). Its weights after the timed steps are compared
  with the toolkit's bit for bit.

Writes ``_build/benchmarks/long_runs.csv``: ms per step, speed-up over the toolkit, compile seconds,
break-even updates, the saving over a 7,560-update run (compile included), the gradient difference,
and whether the weights are the toolkit's bits.
"""

from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch

from benchmarks.common import fresh_inductor_cache, write
from dpo_toolkit.core.config import DataConfig, DPOConfig, ModelConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.dpo_train import dpo_batch_loss
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.model import build_model
from dpo_toolkit.core.optim import make_optimizer
from dpo_toolkit.studies.kl_sweep import beta_grid

DATA = DataConfig(prompt_min=100, prompt_max=500, window=10, test_fraction=0.5)
DPO = DPOConfig(optimizer="rmsprop", lr=5e-4, weight_decay=0.0, epochs=1, batch_size=16, grad_clip=None)
RUN_UPDATES = 7_560  # a 30-epoch drifting-arm run on the KL sweep's task (Park's full size)


def flatten(params: list[torch.Tensor]) -> torch.Tensor:
    """Re-point params into one buffer and their gradients into another; returns the buffer, a leaf whose
    .grad is the gradient buffer (autograd adds each step's gradients into it in place)."""
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat.data[offset : offset + p.numel()].view_as(p)
        p.grad = flat.grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def way(reference, train, betas, order, compiled: bool = False, flat: bool = False):
    """step(i): one DPO step on batch i of `order` (cyclically) of a fresh ensemble of copies of `reference`;
    and the ensemble's stacked weights."""
    policies = Ensemble([copy.deepcopy(reference) for _ in range(len(betas))])
    params = list(policies.params.values())
    forward = torch.compile(lambda tokens: policies(tokens)) if compiled else policies
    batch_loss = dpo_batch_loss(forward, train, reference, betas)
    stepped = [flatten(params)] if flat else params
    optimizer = make_optimizer(stepped, DPO)

    def step(i: int) -> None:
        loss = batch_loss(order[i % len(order)])
        if flat:
            stepped[0].grad.zero_()
        else:
            optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()

    return step, policies.params


def first_gradients(step, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The gradients of the first step (from the starting weights), after it ran."""
    step(0)
    return [p.grad.clone() for p in params.values()]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100, help="members of the ensemble (≥ 2)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timing (≥ 5)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each way; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    if args.members < 2 or args.steps < 5 or args.repeats < 1:
        parser.error(f"need --members ≥ 2, --steps ≥ 5 and --repeats ≥ 1; got {args.members}, {args.steps}, {args.repeats}")
    fresh_inductor_cache("long_runs")  # a cold compile, not an earlier run's
    train, _ = make_pairs(DATA)
    reference = build_model(ModelConfig(), seed=0).requires_grad_(False)
    betas = torch.tensor([[b] for b in beta_grid(args.members, 1e-2, 1.0)])  # (M, 1)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(DPO.batch_size)
    ways = {
        "the toolkit": way(reference, train, betas, order),
        "flat optimizer buffer": way(reference, train, betas, order, flat=True),
    }
    grads = {name: first_gradients(step, params) for name, (step, params) in ways.items()}
    start = time.perf_counter()
    ways["compiled forward"] = way(reference, train, betas, order, compiled=True)
    grads["compiled forward"] = first_gradients(*ways["compiled forward"])  # its first step is the compile
    compile_s = time.perf_counter() - start
    return _timed(ways, grads, compile_s, args)


def _timed(ways: dict, grads: dict, compile_s: float, args: argparse.Namespace) -> pd.DataFrame:
    best = dict.fromkeys(ways, float("inf"))
    for step, _ in ways.values():
        for i in range(1, 4):  # warm-up
            step(i)
    for _ in range(args.repeats):
        for name, (step, _) in ways.items():
            start = time.perf_counter()
            for i in range(args.steps):
                step(4 + i)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    base, toolkit_grads = best["the toolkit"], grads["the toolkit"]
    toolkit_weights = list(ways["the toolkit"][1].values())
    rows = []
    for name, (_, params) in ways.items():
        saved = base - best[name]
        paid = compile_s if name == "compiled forward" else 0.0
        rel = max(
            float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(grads[name], toolkit_grads, strict=True)
        )
        rows.append({"way": name, "ms_per_step": 1e3 * best[name], "speedup": base / best[name], "compile_s": paid,
                     "break_even_updates": paid / saved if saved > 0 else float("inf") if paid else 0.0,
                     "run_saving": (RUN_UPDATES * saved - paid) / (RUN_UPDATES * base), "max_rel_grad_diff": rel,
                     "same_bits": all(torch.equal(a, b) for a, b in zip(params.values(), toolkit_weights, strict=True)),
                     "members": args.members, "run_updates": RUN_UPDATES})  # fmt: skip
    df = pd.DataFrame(rows)
    write(df, "long_runs")
    return df


if __name__ == "__main__":
    main()
