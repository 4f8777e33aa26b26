"""Likelihood displacement with single-token responses (Razin et al., arXiv 2410.08847;
Razin's talk, part 2): DPO on one prompt can lower π(y+), and the mass moves to tokens z
in proportion to ⟨W_z, W_y+ − W_y−⟩.

Two models:
- the *unconstrained-features* model of the paper's theory, where the hidden embedding h
  of the prompt and the unembedding matrix W are the trained parameters and
  π(·|x) = softmax(W h);
- a tiny causal LM (the toolkit's transformer) trained on a synthetic persona corpus, in
  which statements get single-token answers from synonym groups.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dpo_toolkit.core.claims import claims_frame
from dpo_toolkit.core.config import ConfigError, ModelConfig, TrainConfig
from dpo_toolkit.core.losses import dpo_loss, soft_label_sft_loss
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.parameters import BETA, EPOCHS, LEARNING_RATE, RESULTS_ROOT, SEEDS, check, fail, integer
from dpo_toolkit.core.train import fit_full_batch

# Answer tokens by meaning; the first of each group is the most frequent in the corpus.
ANSWER_GROUPS: dict[str, tuple[str, ...]] = {
    "agree": ("Yes", "yes", "Sure", "Yeah"),
    "disagree": ("No", "no", "Never", "Nope"),
    "hedge": ("Maybe", "Perhaps"),
}
ANSWERS = tuple(t for group in ANSWER_GROUPS.values() for t in group)
GROUP_OF = {t: g for g, tokens in ANSWER_GROUPS.items() for t in tokens}
TABLE_PAIRS = (("Yes", "No"), ("No", "Never"), ("Sure", "Yes"))  # the rows of the talk's table


# ---- single-token DPO in the unconstrained-features model ------------------------------


def single_token_dpo_loss(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, y_pos: int, y_neg: int, beta: float
) -> torch.Tensor:
    """``losses.dpo_loss`` of one prompt with single-token responses y+ and y−.
    policy_logps, reference_logps: (..., V) log-probs over the vocabulary. Returns (...)."""
    losses, _, _ = dpo_loss(
        policy_logps[..., y_pos], policy_logps[..., y_neg], reference_logps[..., y_pos], reference_logps[..., y_neg], beta
    )
    return losses


def unconstrained_logps(h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """log softmax(W h): h (d,), W (V, d) → (V,)."""
    return (W @ h).log_softmax(-1)


def first_order_logp_change(
    h: torch.Tensor,
    W: torch.Tensor,
    reference_logps: torch.Tensor,
    y_pos: int,
    y_neg: int,
    beta: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """d/dη log π(z) at η = 0 for one gradient-descent step of size η on (h, W), every z: (V,).

    π = softmax(W h + bias), with the bias (if any) held fixed. With c = β σ(−β margin), the
    step is Δh = η c (W_y+ − W_y−), ΔW_y+ = η c h, ΔW_y− = −η c h, so the logit of
    z ∉ {y+, y−} moves by η c ⟨W_z, W_y+ − W_y−⟩, and Δ log π(z) = Δlogit_z − Σ_k π(k) Δlogit_k:
    the paper's theorem that mass goes to z in proportion to ⟨W_z, W_y+ − W_y−⟩.
    """
    logps = (W @ h + (0 if bias is None else bias)).log_softmax(-1)
    margin = (logps[y_pos] - reference_logps[y_pos]) - (logps[y_neg] - reference_logps[y_neg])
    c = beta * torch.sigmoid(-beta * margin)
    dlogit = c * (W @ (W[y_pos] - W[y_neg]))  # (V,), from Δh
    dlogit[y_pos] = dlogit[y_pos] + c * (h @ h)  # from ΔW_y+
    dlogit[y_neg] = dlogit[y_neg] - c * (h @ h)  # from ΔW_y−
    return dlogit - (logps.exp() * dlogit).sum()


def features_dpo(
    h: torch.Tensor, W: torch.Tensor, bias: torch.Tensor, y_pos: int, y_neg: int, beta: float, lr: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-token DPO by plain gradient descent on (h, W) of the unconstrained-features model
    softmax(W h + bias), bias fixed, from π_ref = the starting point. Returns (π_ref, π_θ), (V,) each."""
    h, W = h.detach().double().clone().requires_grad_(True), W.detach().double().clone().requires_grad_(True)
    bias = bias.detach().double()
    with torch.no_grad():
        reference_logps = (W @ h + bias).log_softmax(-1)
    for _ in range(steps):
        loss = single_token_dpo_loss((W @ h + bias).log_softmax(-1), reference_logps, y_pos, y_neg, beta)
        grad_h, grad_W = torch.autograd.grad(loss, [h, W])
        with torch.no_grad():
            h -= lr * grad_h
            W -= lr * grad_W
    with torch.no_grad():
        return reference_logps.exp(), (W @ h + bias).softmax(-1)


def random_features_study(
    n_instances: int, n_tokens: int, dim: int, h_scale: float, beta: float, lr: float, steps: int, seed: int
) -> pd.DataFrame:
    """The paper's theoretical setting on random instances: W with N(0, 1) rows, h with
    N(0, h_scale²) entries, (y+, y−) = tokens (0, 1). One row per instance: inner_pos_neg =
    ⟨W_y+, W_y−⟩; dlogp_pos_first_order, the one-step change of log π(y+) per unit step
    (``first_order_logp_change``); z_corr, Pearson over z ∉ {y+, y−} of ⟨W_z, W_y+ − W_y−⟩
    against that change; and p_pos_before, p_pos_after after `steps` steps of ``features_dpo``."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_instances):
        W = torch.randn(n_tokens, dim, generator=generator, dtype=torch.float64)
        h = h_scale * torch.randn(dim, generator=generator, dtype=torch.float64)
        reference_logps = (W @ h).log_softmax(-1)
        change = first_order_logp_change(h, W, reference_logps, 0, 1, beta)
        inner_z = W[2:] @ (W[0] - W[1])
        before, after = features_dpo(h, W, torch.zeros(n_tokens, dtype=torch.float64), 0, 1, beta, lr, steps)
        rows.append(
            {
                "inner_pos_neg": float(W[0] @ W[1]),
                "dlogp_pos_first_order": float(change[0]),
                "z_corr": float(np.corrcoef(inner_z.numpy(), change[2:].numpy())[0, 1]),
                "p_pos_before": float(before[0]),
                "p_pos_after": float(after[0]),
            }
        )
    return pd.DataFrame(rows)


def lm_features(model: Transformer, prompt: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, W, bias) of the LM at the answer position of `prompt`, in float64, rebalanced as
    (h / scale, scale · W): the same logits and π, with ‖W_z‖² / ‖h‖² multiplied by scale⁴."""
    with torch.no_grad():
        hidden, _ = model.hidden(prompt[None])
        return hidden[0, -1].double() / scale, model.unembed.weight.double() * scale, model.unembed.bias.double()


# ---- the persona corpus and the tiny LM ------------------------------------------------


@dataclass(frozen=True)
class PersonaConfig:
    """The synthetic persona corpus: prompts 'Q s A' for statements s, each with a stance
    (agree, disagree or hedge) whose answer is drawn from that stance's synonym group."""

    n_statements: int = 60
    """Statements (one token each). Must be ≥ 6."""
    hedge_fraction: float = 0.2
    """Share of statements whose stance is to hedge. Must be in [0, 0.5]."""
    lead_weight: float = 0.55
    """Probability of the first token of the stance's group; the rest share 1 − lead_weight. Must be in (0, 1)."""
    seed: int = 0
    """Seed of the statements' stances. Must be ≥ 0."""

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.n_statements, int) and self.n_statements >= 6, "n_statements", "an integer ≥ 6"),
            (isinstance(self.hedge_fraction, float | int) and 0 <= self.hedge_fraction <= 0.5, "hedge_fraction", "in [0, 0.5]"),
            (isinstance(self.lead_weight, float) and 0 < self.lead_weight < 1, "lead_weight", "a number in (0, 1)"),
            (isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer ≥ 0"),
        ]
        for ok, field, allowed in checks:
            if not ok:
                raise ConfigError(f"PersonaConfig.{field} must be {allowed}, got {getattr(self, field)!r}")

    @property
    def vocab(self) -> tuple[str, ...]:
        """Answer tokens, then the statements s0, s1, …, then the markers Q and A."""
        return (*ANSWERS, *(f"s{i}" for i in range(self.n_statements)), "Q", "A")

    def token(self, name: str) -> int:
        return self.vocab.index(name)

    def model_config(self, d_model: int = 64, n_heads: int = 4) -> ModelConfig:
        """The toolkit's transformer sized for this vocabulary and 3-token prompts."""
        return ModelConfig(d_model=d_model, n_heads=n_heads, d_mlp=d_model, n_ctx=4, d_vocab=len(self.vocab))


def persona_corpus(cfg: PersonaConfig) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(prompts (n, 3) token ids 'Q s A', stance per statement (n,), answer distribution (n, V)).

    Stances: a seeded hedge_fraction of statements hedge, the rest split evenly between
    agree and disagree. Within a stance's group the first token has lead_weight.
    """
    rng = np.random.default_rng(cfg.seed)
    n_hedge = round(cfg.n_statements * cfg.hedge_fraction)
    n_agree = (cfg.n_statements - n_hedge + 1) // 2
    stances = np.array(["agree"] * n_agree + ["disagree"] * (cfg.n_statements - n_hedge - n_agree) + ["hedge"] * n_hedge)
    stances = rng.permutation(stances)
    V = len(cfg.vocab)
    targets = torch.zeros(cfg.n_statements, V, dtype=torch.float64)
    for i, stance in enumerate(stances):
        group = ANSWER_GROUPS[stance]
        rest = (1 - cfg.lead_weight) / (len(group) - 1)
        for k, t in enumerate(group):
            targets[i, cfg.token(t)] = cfg.lead_weight if k == 0 else rest
    prompts = torch.tensor([[cfg.token("Q"), cfg.token(f"s{i}"), cfg.token("A")] for i in range(cfg.n_statements)])
    return prompts, stances, targets


# The notebook's `parameters` cell, one spec per variable (notebooks/likelihood_displacement.md).
PARAMETERS = {
    "n_statements": integer(6),
    "seeds": SEEDS,
    "d_model": integer(4),
    "sft_steps": EPOCHS,
    "sft_lr": LEARNING_RATE,
    "beta": BETA,
    "dpo_steps": EPOCHS,
    "dpo_lr": LEARNING_RATE,
    "prompts_per_pair": integer(1),
    "one_step_lr": LEARNING_RATE,
    "n_instances": integer(1),
    "results_root": RESULTS_ROOT,
}
N_HEADS = 4  # heads of the persona LM (PersonaConfig.model_config)


def check_parameters(values) -> None:
    """Check the likelihood-displacement notebook's parameters (PARAMETERS) and the rules between
    them: d_model splits into N_HEADS heads, and every row of the talk's table has
    prompts_per_pair statements of y+'s stance."""
    check(PARAMETERS, values)
    if values["d_model"] % N_HEADS:
        fail("d_model", f"a multiple of {N_HEADS} (the persona LM's heads)", values["d_model"])
    _, stances, _ = persona_corpus(PersonaConfig(n_statements=values["n_statements"]))
    available = min(int((stances == GROUP_OF[y_pos]).sum()) for y_pos, _ in TABLE_PAIRS)
    if values["prompts_per_pair"] > available:
        allowed = f"≤ {available}, the statements of each table row's stance among n_statements = {values['n_statements']}"
        fail("prompts_per_pair", allowed, values["prompts_per_pair"])


def answer_logps(model: Transformer, prompts: torch.Tensor) -> torch.Tensor:
    """log π(· | prompt) at the answer position, over the whole vocabulary: (n, V)."""
    return model(prompts)[:, -1].log_softmax(-1)


def train_persona_lm(cfg: PersonaConfig, model: Transformer, train_cfg: TrainConfig) -> None:
    """Full-batch SFT of model, in place, on the corpus's expected cross-entropy (soft labels:
    the exact answer distribution of each statement): train_cfg.epochs steps."""
    if model.cfg.d_vocab != len(cfg.vocab) or model.cfg.n_ctx < 3:
        raise ConfigError(f"ModelConfig must have d_vocab={len(cfg.vocab)} and n_ctx ≥ 3 for this corpus, got {model.cfg}")
    prompts, _, targets = persona_corpus(cfg)
    fit_full_batch(model, lambda m: soft_label_sft_loss(answer_logps(m, prompts), targets.float()), train_cfg)


def single_prompt_dpo(
    reference: Transformer, prompt: torch.Tensor, y_pos: int, y_neg: int, beta: float, train_cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO on one prompt and one single-token pair, starting from the reference: train_cfg.epochs
    full steps. Returns (π_ref(·|x), π_θ(·|x)) over the vocabulary, (V,) each, float64."""
    policy = copy.deepcopy(reference).train().requires_grad_(True)
    reference_logps = answer_logps(reference, prompt[None])[0].detach()
    fit_full_batch(
        policy, lambda m: single_token_dpo_loss(answer_logps(m, prompt[None])[0], reference_logps, y_pos, y_neg, beta), train_cfg
    )
    with torch.no_grad():
        return reference_logps.double().exp(), answer_logps(policy, prompt[None])[0].double().exp()


def displacement_row(cfg: PersonaConfig, before: torch.Tensor, after: torch.Tensor, y_pos: str, y_neg: str, top: int = 3) -> dict:
    """One row of the talk's table: π(y+) before and after, and the answer tokens (other than
    y+ and y−) whose probability rose most, classed benign (y+'s meaning) or catastrophic
    (another). The run is catastrophic when π(y+) fell and a token of another meaning is
    among those that rose most."""
    displaced = bool(after[cfg.token(y_pos)] < before[cfg.token(y_pos)])
    gains = {t: float(after[cfg.token(t)] - before[cfg.token(t)]) for t in ANSWERS if t not in (y_pos, y_neg)}
    rising = [t for t, g in sorted(gains.items(), key=lambda kv: -kv[1]) if g > 0][:top]
    benign = [t for t in rising if GROUP_OF[t] == GROUP_OF[y_pos]]
    catastrophic = [t for t in rising if GROUP_OF[t] != GROUP_OF[y_pos]]
    return {
        "y_pos": y_pos,
        "y_neg": y_neg,
        "p_pos_before": float(before[cfg.token(y_pos)]),
        "p_pos_after": float(after[cfg.token(y_pos)]),
        "displaced": displaced,
        "benign": ", ".join(benign) or "—",
        "catastrophic": ", ".join(catastrophic) or "—",
        "is_catastrophic": displaced and bool(catastrophic),
    }


def one_step_geometry(model: Transformer, prompt: torch.Tensor, y_pos: int, y_neg: int, beta: float, lr: float) -> pd.DataFrame:
    """One plain gradient step of single-token DPO (from π_ref = the model), in the full LM and in
    the unconstrained-features model built from the LM's own h (last hidden embedding at the
    answer position) and W (unembedding). One row per token z: inner = ⟨W_z, W_y+ − W_y−⟩,
    dlogp_lm and dlogp_features (the change of log π(z) after the step), and dlogp_theory
    (``first_order_logp_change`` × lr)."""
    h, W, b = lm_features(model, prompt)
    # the LM, in float64
    policy = copy.deepcopy(model).double().train().requires_grad_(True)
    with torch.no_grad():
        reference_logps = answer_logps(policy, prompt[None])[0]
    loss = single_token_dpo_loss(answer_logps(policy, prompt[None])[0], reference_logps, y_pos, y_neg, beta)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    with torch.no_grad():
        for p, g in zip(policy.parameters(), grads, strict=True):
            p.sub_(lr * g)
        dlogp_lm = answer_logps(policy, prompt[None])[0] - reference_logps
    # the unconstrained-features model (bias fixed)
    features_reference = (W @ h + b).log_softmax(-1)
    h_var, W_var = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
    loss = single_token_dpo_loss((W_var @ h_var + b).log_softmax(-1), features_reference, y_pos, y_neg, beta)
    grad_h, grad_W = torch.autograd.grad(loss, [h_var, W_var])
    with torch.no_grad():
        dlogp_features = ((W - lr * grad_W) @ (h - lr * grad_h) + b).log_softmax(-1) - features_reference
        theory = lr * first_order_logp_change(h, W, features_reference, y_pos, y_neg, beta, bias=b)
    return pd.DataFrame(
        {
            "z": np.arange(len(W)),
            "inner": (W @ (W[y_pos] - W[y_neg])).numpy(),
            "dlogp_lm": dlogp_lm.numpy(),
            "dlogp_features": dlogp_features.numpy(),
            "dlogp_theory": theory.numpy(),
        }
    )


def lm_study(
    cfg: PersonaConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: TrainConfig,
    beta: float,
    seeds: list[int],
    prompts_per_pair: int,
    one_step_lr: float,
) -> tuple[dict[int, np.ndarray], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The tiny-LM experiments, for each seed (one LM per seed):

    - the cosine similarity of the answer tokens' unembeddings, {seed: (10, 10)};
    - the talk's table: for each pair of TABLE_PAIRS, DPO (dpo_cfg.epochs full steps) on each
      of the first `prompts_per_pair` statements whose stance is y+'s meaning;
    - one-step geometry (``one_step_geometry``) of those runs, for z ∉ {y+, y−};
    - one step for every ordered pair of answer tokens on the first statement of y+'s stance:
      ⟨W_y+, W_y−⟩ and the change of log π(y+).
    """
    prompts, stances, _ = persona_corpus(cfg)
    answer_ids = [cfg.token(t) for t in ANSWERS]
    similarity, table, geometry, pairs = {}, [], [], []
    for seed in seeds:
        model = build_model(model_cfg, seed)
        train_persona_lm(cfg, model, sft_cfg)
        model.eval().requires_grad_(False)
        W = model.unembed.weight.detach()
        similarity[seed] = cosine_matrix(W, answer_ids)
        for y_pos, y_neg in TABLE_PAIRS:
            chosen = [i for i, s in enumerate(stances) if s == GROUP_OF[y_pos]][:prompts_per_pair]
            for i in chosen:
                before, after = single_prompt_dpo(model, prompts[i], cfg.token(y_pos), cfg.token(y_neg), beta, dpo_cfg)
                table.append({"seed": seed, "statement": i, **displacement_row(cfg, before, after, y_pos, y_neg)})
                step = one_step_geometry(model, prompts[i], cfg.token(y_pos), cfg.token(y_neg), beta, one_step_lr)
                others = step[~step["z"].isin([cfg.token(y_pos), cfg.token(y_neg)])]
                geometry.append(others.assign(seed=seed, statement=i, pair=f"{y_pos}/{y_neg}"))
        for y_pos in ANSWERS:
            i = next(k for k, s in enumerate(stances) if s == GROUP_OF[y_pos])
            for y_neg in ANSWERS:
                if y_neg == y_pos:
                    continue
                step = one_step_geometry(model, prompts[i], cfg.token(y_pos), cfg.token(y_neg), beta, one_step_lr)
                inner = float(W[cfg.token(y_pos)] @ W[cfg.token(y_neg)])
                dlogp_pos = float(step.loc[step["z"] == cfg.token(y_pos), "dlogp_lm"].iloc[0])
                pairs.append({"seed": seed, "y_pos": y_pos, "y_neg": y_neg, "inner_pos_neg": inner, "dlogp_pos": dlogp_pos})
    return similarity, pd.DataFrame(table), pd.concat(geometry, ignore_index=True), pd.DataFrame(pairs)


def cosine_matrix(W: torch.Tensor, rows: list[int]) -> np.ndarray:
    """Cosine similarity of the chosen rows of W: (len(rows), len(rows))."""
    unit = F.normalize(W[rows].double(), dim=-1)
    return (unit @ unit.T).numpy()


# ---- claim C10 --------------------------------------------------------------------------

CORRELATION = 0.8  # |Pearson| that counts as "in proportion to"
RANK_CORRELATION = 0.5  # −Spearman(⟨W+, W−⟩, Δ log π(y+)) that counts as "grows with"


def displacement_claims(features: pd.DataFrame, geometry: pd.DataFrame, pairs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The C10 claims table.

    features: ``random_features_study`` rows (the paper's theoretical setting);
    geometry: ``one_step_geometry`` rows of the tiny LM for z ∉ {y+, y−}, with seed, statement
    and pair columns (correlations are taken within each run, then summarised);
    pairs: one row per (seed, y+, y−) with `inner_pos_neg` = ⟨W_y+, W_y−⟩ and `dlogp_pos`,
    the change of log π(y+) after one step in the LM; table: ``displacement_row`` rows of
    the multi-step runs in the LM. Verdict: reproduced if the LM shows all three parts
    (proportional mass shift, displacement growing with ⟨W_y+, W_y−⟩, catastrophic runs);
    partly if the LM or the theoretical setting shows some of them.
    """
    per_run = geometry.groupby(["seed", "statement", "pair"])
    r_lm = float(per_run.apply(lambda g: np.corrcoef(g["inner"], g["dlogp_lm"])[0, 1], include_groups=False).median())
    r_lm_features = float(per_run.apply(lambda g: np.corrcoef(g["inner"], g["dlogp_features"])[0, 1], include_groups=False).min())
    rank_lm = float(pairs[["inner_pos_neg", "dlogp_pos"]].corr(method="spearman").iloc[0, 1])
    share_displaced = float(table["displaced"].mean())
    share_catastrophic = float(table["is_catastrophic"].mean())
    r_features = float(features["z_corr"].min())
    rank_features = float(features[["inner_pos_neg", "dlogp_pos_first_order"]].corr(method="spearman").iloc[0, 1])
    displaced_features = float((features["p_pos_after"] < features["p_pos_before"]).mean())
    lm_parts = [r_lm >= CORRELATION, rank_lm <= -RANK_CORRELATION, share_catastrophic > 0]
    feature_parts = [r_features >= CORRELATION, rank_features <= -RANK_CORRELATION, displaced_features > 0]
    verdict = "reproduced" if all(lm_parts) else "partly" if any(lm_parts + feature_parts) else "not reproduced"
    return claims_frame(
        [
            {
                "claim_id": "C10",
                "statement": "Single-token DPO lowers log π(y+) when ⟨W_y+, W_y−⟩ is large, and the mass moves to tokens z "
                "in proportion to ⟨W_z, W_y+ − W_y−⟩, which can be tokens of the opposite meaning.",
                "paper_value": "displacement in OLMo-1B, Gemma-2B, Llama-3-8B, some of it catastrophic (talk's table)",
                "our_value": f"tiny LM: Pearson(⟨W_z, W_y+ − W_y−⟩, Δ log π(z)) after one step, median over runs {r_lm:.2f} "
                f"(its unconstrained-features model: ≥ {r_lm_features:.3f}); "
                f"Spearman(⟨W_y+, W_y−⟩, Δ log π(y+)) = {rank_lm:+.2f} over {len(pairs)} pairs; "
                f"multi-step runs: π(y+) fell in {share_displaced:.0%}, "
                f"catastrophic in {share_catastrophic:.0%} of {len(table)}. "
                f"Unconstrained features ({len(features)} random instances): Pearson ≥ {r_features:.3f}, "
                f"Spearman {rank_features:+.2f}, π(y+) fell in {displaced_features:.0%}",
                "verdict": verdict,
            }
        ]
    )
