"""Synthetic sparse multinomial problems for the probe-solver tests (``from probe_problems import sparse_problem``)."""

from __future__ import annotations

import numpy as np


def sparse_problem(n: int, f: int, c: int, seed: int, support: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features [n, f]; labels [n] drawn from the softmax of a weight matrix that only the first
    ``support`` features feed (so a sparse solution exists)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    W = np.zeros((c, f))
    W[:, :support] = rng.normal(size=(c, support)) * 2
    y = np.argmax(X @ W.T + rng.gumbel(size=(n, c)), axis=1)
    return X, y
