"""DPO step throughput of one model: the toolkit against Hugging Face TRL's DPOTrainer.

    python -m benchmarks.throughput [--steps 150] [--repeats 3]

Same data (the KL sweep's number-line pairs, Park §4.2), batch size 16, RMSprop 5e-5,
β 0.1, the same number of steps, in one run, alternating, best of `repeats`:

- **toolkit**: ``train_dpo`` on its transformer (1 layer, d_model 128, 4 heads, MLP 128,
  12-token vocabulary); reference log-probs computed once for the whole set;
- **TRL DPOTrainer** on a Hugging Face GPT-2 of the same shape (1 layer, n_embd 128,
  4 heads, n_inner 128, vocabulary 12 + pad + EOS), built from a config with a local
  character tokenizer (no download): sigmoid loss, float32 and no gradient checkpointing
  as in the toolkit, TRL's defaults otherwise (the reference model, a copy of the
  initial policy, runs on every batch); a second row keeps TRL 1.16's own defaults,
  bf16 autocast and gradient checkpointing;
- **plain PyTorch on the GPT-2**: the textbook loop (policy and reference forward on
  each batch, DPO loss, RMSprop step), the floor of what any trainer on that model costs.

Pairs per second counts preference pairs trained on per wall-clock second of the whole
training call (setup included, evaluation off). Writes ``_build/benchmarks/throughput.csv``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.common import seconds, write
from dpo_toolkit.core.config import DataConfig, DPOConfig, ModelConfig
from dpo_toolkit.core.data import VOCAB, PairSet, make_pairs
from dpo_toolkit.core.dpo_train import train_dpo
from dpo_toolkit.core.model import build_model

DATA = DataConfig(prompt_min=100, prompt_max=500, window=10, test_fraction=0.5)
BATCH, LR, BETA = 16, 5e-5, 0.1


def pairs_subset(n: int, seed: int = 0) -> PairSet:
    """n training pairs of the KL sweep's set, drawn at random (seeded)."""
    train, _ = make_pairs(DATA)
    if n > len(train):
        raise ValueError(f"--steps × {BATCH} must be ≤ {len(train)} training pairs, got {n}")
    index = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
    return PairSet(train.prompt[index], train.chosen[index], train.rejected[index])


def texts(pairs: PairSet) -> dict[str, list[str]]:
    """The pairs as strings: prompt 'ABC=', responses 'XYZ.'."""
    return {
        "prompt": [f"{s}=" for s in pairs.prompt],
        "chosen": [f"{y}." for y in pairs.chosen],
        "rejected": [f"{y}." for y in pairs.rejected],
    }


def hf_tokenizer():
    """A character-level fast tokenizer over the 12 task symbols plus <pad> and <eos>, built locally."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(VOCAB)} | {"<pad>": len(VOCAB), "<eos>": len(VOCAB) + 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def hf_model(seed: int = 0):
    """GPT-2 with the toolkit model's shape: 1 layer, n_embd 128, 4 heads, n_inner 128, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(VOCAB) + 2, n_positions=16, n_embd=128, n_layer=1, n_head=4, n_inner=128,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=len(VOCAB), eos_token_id=len(VOCAB) + 1,
                     bos_token_id=len(VOCAB) + 1)  # fmt: skip
    return GPT2LMHeadModel(cfg)


def run_toolkit(pairs: PairSet) -> None:
    policy = build_model(ModelConfig(), seed=0)
    reference = copy.deepcopy(policy).requires_grad_(False)
    cfg = DPOConfig(
        optimizer="rmsprop", lr=LR, weight_decay=0.0, epochs=1, batch_size=BATCH, grad_clip=None, n_evals=1, beta=BETA
    )
    train_dpo(policy, reference, pairs, cfg, lambda p, betas: {}, progress=False)


def run_trl(pairs: PairSet, workdir: str, defaults: bool = False) -> None:
    """TRL's DPOTrainer for one epoch over pairs. In float32 without gradient checkpointing,
    as the toolkit runs, unless `defaults`: then TRL 1.16's own defaults, bf16 autocast and
    gradient checkpointing, which are slow on a CPU without native bf16."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    args = TRLConfig(output_dir=workdir, per_device_train_batch_size=BATCH, learning_rate=LR, optim="rmsprop", beta=BETA,
                     num_train_epochs=1, lr_scheduler_type="constant", warmup_steps=0, logging_strategy="no",
                     save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                     max_length=16, seed=0, bf16=defaults, gradient_checkpointing=defaults)  # fmt: skip
    model = hf_model()
    reference = copy.deepcopy(model)  # passed explicitly: TRL would otherwise reload it from a hub path
    trainer = DPOTrainer(model, ref_model=reference, args=args, train_dataset=Dataset.from_dict(texts(pairs)),
                         processing_class=hf_tokenizer())  # fmt: skip
    trainer.train()


def _gpt2_batch(tokenizer, pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded: token ids (2n, T) and the response mask (2n, T)."""
    t = texts(pairs)
    seqs, masks = [], []
    for responses in (t["chosen"], t["rejected"]):
        for prompt, response in zip(t["prompt"], responses, strict=True):
            p = tokenizer(prompt)["input_ids"]
            r = tokenizer(response)["input_ids"] + [tokenizer.eos_token_id]
            seqs.append(p + r)
            masks.append([0] * len(p) + [1] * len(r))
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)
    return ids, mask


def run_plain_gpt2(pairs: PairSet) -> None:
    tokenizer = hf_tokenizer()
    policy = hf_model()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    ids, mask = _gpt2_batch(tokenizer, pairs)
    n = len(pairs)
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=LR)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))

    def logps(model, rows: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids[rows]).logits[:, :-1]  # (rows, T − 1, V)
        token_logps = logits.log_softmax(-1).gather(-1, ids[rows, 1:, None]).squeeze(-1)
        return (token_logps * mask[rows, 1:]).sum(-1)

    for index in order.split(BATCH):
        rows = torch.cat([index, index + n])
        with torch.no_grad():
            ref_chosen, ref_rejected = logps(reference, rows).chunk(2)
        chosen, rejected = logps(policy, rows).chunk(2)
        loss = -F.logsigmoid(BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each method (≥ 10)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the best is kept (≥ 1)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.repeats < 1:
        parser.error(f"--steps must be ≥ 10 and --repeats ≥ 1, got {args.steps} and {args.repeats}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pairs = pairs_subset(args.steps * BATCH)
    methods = {"toolkit (train_dpo)": lambda: run_toolkit(pairs), "plain PyTorch, HF GPT-2": lambda: run_plain_gpt2(pairs)}
    with tempfile.TemporaryDirectory() as workdir:
        methods["TRL DPOTrainer, HF GPT-2"] = lambda: run_trl(pairs, workdir)
        methods["TRL DPOTrainer, its defaults (bf16, checkpointing)"] = lambda: run_trl(pairs, workdir, defaults=True)
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(seconds(fn))
    rows = [{"method": name, "steps": args.steps, "pairs": len(pairs), "best_s": min(t), "pairs_per_s": len(pairs) / min(t)}
            for name, t in times.items()]  # fmt: skip
    df = pd.DataFrame(rows)
    trl = df.loc[df["method"] == "TRL DPOTrainer, HF GPT-2", "pairs_per_s"].iloc[0]
    df["vs_trl"] = df["pairs_per_s"] / trl
    write(df, "throughput")
    return df


if __name__ == "__main__":
    main()
