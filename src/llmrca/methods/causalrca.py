"""CausalRCA (Xin, Chen & Zhao, JSS'23): a causal graph learned by DAG-GNN, then PageRank over it.

DAG-GNN (Yu et al., ICML'19) is a variational autoencoder whose latent code is the noise of a linear
structural equation model, X = X·A + E, with the weighted adjacency A as a parameter:

- encoder: a small MLP applied to every value, then μ = MLP(X)·(I − A) (the noise the SEM would need);
- the code is sampled, Z = μ + ``noise``·ε, ε ~ N(0, I), with the KL term of a unit-variance posterior;
- decoder: X̂ = MLP'(Z·(I − A)⁻¹) (the data the SEM produces from that noise);
- loss: reconstruction error + KL (½‖μ‖²) + ``l1``·|A|₁, under the NOTEARS-style acyclicity constraint
  h(A) = tr[(I + A∘A/d)^d] − d = 0, enforced by an augmented Lagrangian (λ·h + c/2·h²; λ += c·h after every
  round; c ×= ``c_factor`` when h did not shrink below ``h_shrink`` of its previous value).

A[i, j] is the effect of series i on series j. PageRank (``graph_heads.pagerank_head``) runs on the graph
with every edge turned around (effect → cause), weighted by |A|, so a series collects the weight of what it
explains; series are ranked by it. The model is trained on the whole window (``train_on="window"``: the change
at injection is what makes the dependencies visible) or on the post-injection part only. Constant series are
left out of the model and score 0.

Needs the ``torch`` extra (``pip install 'llmrca[torch]'``); torch is imported only when ``rank`` runs.
Training is seeded (weights and latent noise drawn from ``seed``) with torch's deterministic algorithms on,
on the CPU with ``threads`` threads; torch's global RNG and settings are restored afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import networkx as nx
import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.by_service import finite_window
from llmrca.methods.graph_heads import pagerank_head
from llmrca.methods.params import check_float, check_int
from llmrca.methods.window import DEFAULT_WINDOW, metric_window

TORCH_HINT = "causalrca needs the torch extra: pip install 'llmrca[torch]'"


def import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise MethodError(TORCH_HINT) from None


class CausalRCA(BaseMethod):
    name = "causalrca"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,  # rows each side of inject_time ("auto": by source)
            "train_on": "window",  # "window" (pre + post) or "post"
            "hidden": 16,  # width of the encoder and decoder MLPs
            "noise": 1.0,  # std of the sampled latent code (the VAE's posterior noise)
            "rounds": 8,  # augmented-Lagrangian rounds (outer iterations)
            "epochs": 120,  # full-batch Adam steps per round: rounds × epochs is the training cost
            "lr": 1e-2,  # Adam learning rate
            "l1": 0.0,  # L1 penalty on A
            "c_init": 1.0,  # initial quadratic penalty
            "c_factor": 10.0,  # penalty growth when h(A) shrinks too little
            "c_max": 1e12,  # penalty cap
            "h_shrink": 0.25,  # h must fall below this share of its previous value to keep c
            "h_tol": 1e-8,  # stop once h(A) is this small
            "edge_threshold": 0.0,  # |A| at or below this is no edge in the PageRank graph
            "damping": 0.85,  # PageRank damping factor
            "threads": 1,  # torch CPU threads while training: small matrices run fastest on one
            "max_columns": 250,  # refuse wider cases before training (see MAX_COLUMNS_NOTE); None: no limit
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        self._check(p)
        raw = metric_window(obs, window=p["window"], min_pre=2, min_post=3)
        w = finite_window(raw)
        x = w.values if p["train_on"] == "window" else w.post
        sd = x.std(axis=0)
        keep = np.flatnonzero(sd > 0)  # constant series carry no dependency: not in the graph, score 0
        if len(keep) == 0 and np.isfinite(raw.values).all(axis=0).any():  # data, but nothing moves
            raise NoAnswer("causalrca: every series is constant in the rows it trains on; nothing to blame")
        if len(keep) < 2:
            raise MethodError(f"causalrca: {len(keep)} non-constant series in the window; need at least 2")
        if x.shape[0] < 4:
            raise MethodError(f"causalrca: {x.shape[0]} rows to train on; need at least 4")
        if p["max_columns"] is not None and len(keep) > int(p["max_columns"]):
            raise MethodError(f"causalrca: {len(keep)} non-constant series, more than max_columns="
                              f"{p['max_columns']} ({MAX_COLUMNS_NOTE}); use a narrower view or raise max_columns")
        torch = import_torch()  # after the checks: a case it would refuse is refused without torch
        z = (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
        with _deterministic(torch, seed, int(p["threads"])):
            a = fit_dag_gnn(torch, z, **{k: p[k] for k in _TRAIN_KEYS})
        if not np.isfinite(a).all():
            raise MethodError("causalrca: DAG-GNN training diverged (non-finite weights); try a lower lr")
        names = [w.columns[i] for i in keep]
        pr = pagerank_on_causes(a, names, threshold=float(p["edge_threshold"]), damping=float(p["damping"]))
        scores = {c: 0.0 for c in w.columns}
        scores.update(pr)
        return Ranking.from_scores(w.columns, [scores[c] for c in w.columns])


    def _check(self, p: dict[str, object]) -> None:
        if p["train_on"] not in ("window", "post"):
            raise MethodError(f"causalrca: train_on must be 'window' or 'post', got {p['train_on']!r}")
        for k in ("hidden", "rounds", "epochs", "threads"):
            check_int(self.name, k, p[k], minimum=1)
        check_int(self.name, "max_columns", p["max_columns"], minimum=2, allow_none=True)
        bounds = {"lr": (0.0, 10.0), "c_init": (0.0, 1e30), "c_factor": (1.0, 1e6), "c_max": (0.0, 1e30),
                  "h_shrink": (0.0, 1.0), "damping": (0.0, 1.0)}
        for k, (low, high) in bounds.items():
            check_float(self.name, k, p[k], low=low, high=high)
        for k in ("noise", "l1", "h_tol", "edge_threshold"):
            check_float(self.name, k, p[k], low=0.0, high=np.inf, low_open=False)


# Why wider cases are refused: every training step evaluates h(A) = tr[(I + A∘A/d)^d] − d on the d × d adjacency
# (a d-th matrix power, ~d³ log d) and its gradient, rounds × epochs = 960 times. Measured with
# `python benchmarks/scale.py --methods causalrca` (2026-12-07, loaded 2-core VM): 43 s at 200 columns, past
# 120 s at 1,000; 13 s at 198 on an idle one (registry.COLUMN_HEAVY): 250 series fit a 60 s budget on 2 cores.
MAX_COLUMNS_NOTE = "DAG-GNN's acyclicity term costs ~d^3 per step: 250 series fit ~60 s on 2 cores"

_TRAIN_KEYS = ("hidden", "noise", "rounds", "epochs", "lr", "l1", "c_init", "c_factor", "c_max", "h_shrink",
               "h_tol")


@contextmanager
def _deterministic(torch: Any, seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic torch on ``threads`` CPU threads for the duration; the caller's global RNG and
    settings are restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(max(1, threads))
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before)
            torch.set_num_threads(threads_before)


def fit_dag_gnn(
    torch: Any,
    x: np.ndarray,
    *,
    hidden: int,
    noise: float,
    rounds: int,
    epochs: int,
    lr: float,
    l1: float,
    c_init: float,
    c_factor: float,
    c_max: float,
    h_shrink: float,
    h_tol: float,
) -> np.ndarray:
    """The weighted adjacency (d, d) DAG-GNN learns from standardised data ``x`` (n, d).

    Randomness (initial weights, latent noise) comes from torch's global generator: seed it first.
    """
    n, d = x.shape
    f32 = torch.float32
    X = torch.as_tensor(x, dtype=f32)
    eye = torch.eye(d, dtype=f32)
    off_diag = 1.0 - eye

    def mlp(width: int) -> list[Any]:
        return [
            (torch.randn(1, width, dtype=f32) * (2.0**0.5)).requires_grad_(),  # He init, fan-in 1
            torch.zeros(width, dtype=f32, requires_grad=True),
            (torch.randn(width, 1, dtype=f32) / width**0.5).requires_grad_(),
            torch.zeros(1, dtype=f32, requires_grad=True),
        ]

    def apply(ps: list[Any], v: Any) -> Any:  # the same small MLP on every scalar of v
        h = torch.relu(v.reshape(-1, 1) @ ps[0] + ps[1])
        return (h @ ps[2] + ps[3]).reshape(v.shape)

    enc, dec = mlp(hidden), mlp(hidden)
    a_raw = torch.zeros(d, d, dtype=f32, requires_grad=True)
    opt = torch.optim.Adam([a_raw, *enc, *dec], lr=lr)

    def acyclicity(a: Any) -> tuple[float, Any]:
        """h(A) and its gradient 2·(M^(d−1))ᵀ∘A, M = I + A∘A/d, from one matrix power: autograd through
        the repeated squaring would cost three times as much, and this is most of a step's work."""
        m = eye + a * a / d
        p = torch.linalg.matrix_power(m, d - 1)
        return float((p * m.T).sum()) - d, 2.0 * p.T * a

    lam, c, h_prev = 0.0, float(c_init), float("inf")
    for _ in range(int(rounds)):
        for _ in range(int(epochs)):
            opt.zero_grad()
            a = a_raw * off_diag
            m = eye - a
            mu = apply(enc, X) @ m
            # Sampling the code is what makes A matter: without noise the MLPs could shrink Z to nothing
            # (KL → 0) and blow it back up in the decoder, explaining X with A = 0.
            zlat = mu + noise * torch.randn(mu.shape, dtype=f32)
            xhat = apply(dec, torch.linalg.solve(m.T, zlat.T).T)  # Z·(I − A)⁻¹
            with torch.no_grad():
                h, grad_h = acyclicity(a)
            # (λ + c·h)·⟨∇h, A⟩ has the gradient of the penalty λ·h + c/2·h² with respect to A.
            loss = (
                0.5 * ((xhat - X) ** 2).sum() / n
                + 0.5 * (mu**2).sum() / n
                + l1 * a.abs().sum()
                + (lam + c * h) * (grad_h * a).sum()
            )
            loss.backward()
            opt.step()
        with torch.no_grad():
            h_now = acyclicity(a_raw * off_diag)[0]
        lam += c * h_now
        if h_now <= h_tol:
            break
        if h_now > h_shrink * h_prev:
            c = min(c * c_factor, c_max)
        h_prev = h_now
    return (a_raw * off_diag).detach().double().numpy().copy()


def pagerank_on_causes(
    a: np.ndarray, names: list[str], *, threshold: float, damping: float
) -> dict[str, float]:
    """PageRank over the learned graph turned around (effect → cause), weighted by |A|; abstains (``NoAnswer``)
    when no edge is left after ``threshold``: the training found no dependency to follow."""
    wts = np.abs(a)
    np.fill_diagonal(wts, 0.0)
    src, dst = np.nonzero(wts > threshold)
    if len(src) == 0:
        raise NoAnswer(f"causalrca: the learned graph has no edge with |weight| > {threshold:g}")
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for i, j in zip(src.tolist(), dst.tolist()):
        g.add_edge(names[i], names[j], weight=float(wts[i, j]))  # cause i → effect j
    return pagerank_head(g, alpha=damping, weight="weight")
