"""Sparse probes: the solver against scikit-learn, the path, label cleaning, the store round trip."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from atlas.config import ProbeConfig
from atlas.probes import ProbeError, composition, fista, fit_probe, l1_path, labels_from_pattern, objective, sklearn_lambda
from atlas.probes.solver import lambda_max
from probe_problems import sparse_problem


def _problem(n=2000, f=50, c=5, seed=0):
    return sparse_problem(n, f, c, seed, support=10)


def _sklearn(X, y, C, tol=1e-10):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, l1_ratio=1.0, solver="saga", tol=tol, max_iter=100000).fit(X, y)


@pytest.mark.parametrize("C", [0.02, 0.2])
def test_same_objective_and_sparsity_as_sklearn(C):
    X, y = _problem()
    sk = _sklearn(X, y, C)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    lam = sklearn_lambda(C, len(y))
    r = fista(Xt, yt, 5, lam, tol=1e-9, max_iter=100000)
    assert r.converged
    f_sk = objective(Xt, yt, torch.tensor(sk.coef_), torch.tensor(sk.intercept_), lam)
    assert abs(r.objective - f_sk) <= 1e-4 * f_sk
    assert np.array_equal(r.W.abs().numpy() > 1e-6, np.abs(sk.coef_) > 1e-6)
    assert 0 < int((r.W != 0).sum()) < r.W.numel()  # a sparse solution, not a trivial one


@pytest.mark.slow
def test_faster_than_sklearn_saga_on_the_same_problem():
    X, y = _problem(n=4000, f=128, c=20, seed=1)
    C, lam = 0.05, sklearn_lambda(0.05, 4000)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # saga is single-threaded: compare one core with one core (and stay fair under load)
    try:
        fista(Xt, yt, 20, lam, max_iter=2)  # warm-up
        t = time.perf_counter()
        r = fista(Xt, yt, 20, lam)  # the default KKT tolerance, 1e-3 of lambda
        ours = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    sk = _sklearn(X, y, C, tol=1e-4)
    theirs = time.perf_counter() - t
    f_sk = objective(torch.tensor(X), yt, torch.tensor(sk.coef_), torch.tensor(sk.intercept_), lam)
    f_ours = objective(torch.tensor(X), yt, r.W.double(), r.b.double(), lam)
    assert f_ours <= f_sk * (1 + 1e-4)  # at least as good a solution ...
    assert ours < theirs, (ours, theirs)  # ... in less time


def test_path_starts_empty_and_grows():
    X, y = _problem()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    lam0 = lambda_max(Xt, yt, 5)
    at_max = fista(Xt, yt, 5, lam0 * 1.001)
    assert int((at_max.W != 0).sum()) == 0
    below = fista(Xt, yt, 5, lam0 * 0.9)
    assert int((below.W != 0).sum()) > 0
    path = l1_path(Xt[:1600], yt[:1600], 5, Xt[1600:], yt[1600:], n_lambdas=8, patience=10)
    assert path.nnz[0] <= 1 and path.nnz == sorted(path.nnz)
    assert path.lambdas == sorted(path.lambdas, reverse=True)
    assert path.val_acc[path.best] == max(path.val_acc) > 0.7


def test_probe_recovers_planted_neurons_and_reports_left_out_rows():
    rng = np.random.default_rng(2)
    n, units = 600, 40
    y = rng.integers(0, 4, n)
    X = rng.normal(size=(n, units)) * 0.3
    X[np.arange(n), 10 + y] += 3.0  # class k lights up unit 10 + k
    labels = [f"class{k}" for k in y]
    labels[0] = ""  # no label
    labels[1] = "lonely"  # a class with a single example
    X[2] = np.nan  # an image that could not be decoded
    X[3, 5], X[4, [5, 7]] = np.inf, (np.nan, -np.inf)  # the model overflowed on two images, in units 5 and 7
    skipped = np.zeros(n, bool)
    skipped[2] = True
    p = fit_probe(X, labels, ProbeConfig(float64=True), skipped=skipped)
    assert p.classes == ["class0", "class1", "class2", "class3"]
    assert p.val_accuracy > 0.95
    for k in range(4):
        assert composition(p, f"class{k}", 1)[0][1] == 10 + k
    whats = {w: (n_, why) for w, n_, why in p.left_out}
    assert whats["images without a label"][0] == 1
    assert whats["class 'lonely'"][0] == 1 and "fewer than 2" in whats["class 'lonely'"][1]
    assert whats["images without activations"][0] == 1
    assert whats["images with non-finite activations"][0] == 2 and "in 2 unit(s)" in whats[
        "images with non-finite activations"][1]
    assert p.n_train + p.n_val == n - 5
    assert np.array_equal(p.predict(X[5:12]), [p.classes.index(c) for c in labels[5:12]])
    # without `skipped`, all-NaN rows count as skipped and partly non-finite rows as the model's
    q = fit_probe(X, labels, ProbeConfig(float64=True, n_lambdas=2))
    assert {w: n_ for w, n_, _ in q.left_out}["images with non-finite activations"] == 2
    with pytest.raises(ProbeError, match="skipped has 3 entries for 600 images"):
        fit_probe(X, labels, skipped=np.zeros(3, bool))


def test_probe_bad_input():
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ProbeError, match="10 labels|labels for 10 images"):
        fit_probe(X, ["a"] * 9)
    with pytest.raises(ProbeError, match="need at least 2 classes"):
        fit_probe(X, ["a"] * 9 + ["b"])
    assert labels_from_pattern(["picto:cat", "word:cat", "picto:sun"], r"picto:(\w+)") == ["cat", "", "sun"]


def test_probe_layer_round_trip(small_store, tmp_path):
    import shutil

    from atlas.probes.report import load_probe_weights, probe_layer
    from atlas.store import Store

    path = tmp_path / "s.h5"
    shutil.copy(small_store, path)
    p = probe_layer(path, "visual.layer4.0", "shapes", config=ProbeConfig(n_lambdas=6))
    with Store(path) as st:
        stored = load_probe_weights(st, "shapes")
    assert stored.classes == p.classes and np.allclose(stored.W, p.W, atol=1e-6)
    assert stored.attrs["layer"] == "visual.layer4.0" and np.allclose(stored.mean, p.mean, atol=1e-5)
    assert stored.attrs["val_accuracy"] == pytest.approx(p.val_accuracy)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nnope.png,x\n")
    with pytest.raises(ValueError, match="no image of the store appears"):
        probe_layer(path, "visual.layer4.0", "bad", labels_csv=str(csv))
    csv.write_text("file,cls\n")
    with pytest.raises(ValueError, match="needs a header"):
        probe_layer(path, "visual.layer4.0", "bad", labels_csv=str(csv))


def _planted(n, f, c, seed=0, **kw):
    """bench/probe_path.py's planted problem (raw, unstandardized features): X [n, f] float64, y, planted [c, 4]."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from probe_path import planted_problem

    X, y, planted = planted_problem(n, f, c, seed=seed, **kw)
    return X.double(), y, planted


def test_planted_support_recovered_and_saga_objective_matched():
    """On a small planted problem (standardized as fit_probe does), the path's probe at a moderate lambda puts a
    positive weight on every planted (class, feature) pair and each class's 4 largest weights are its planted ones;
    at that lambda the objective equals saga's (run to convergence) within 1e-4."""
    X, y, planted = _planted(3000, 40, 6, seed=1)
    from probe_path import support_scores

    Z = (X - X.mean(0)) / X.std(0)
    path = l1_path(Z, y, 6, n_lambdas=10, patience=0)
    assert all(path.converged) and max(path.kkt) <= 1e-3 and path.val_acc[path.best] > 0.99
    scores = [support_scores(w, planted) for w in path.W]
    k = next(i for i, s in enumerate(scores) if s[0] == 1.0)  # the largest lambda with every planted pair in
    recall, precision, composition = scores[k]
    assert composition == 1.0 and precision == 1.0 and path.nnz[k] == 24, (scores, path.nnz)
    assert all(s[2] == 1.0 for s in scores[k:])  # below it the compositions stay the planted ones
    lam = path.lambdas[k]
    sk = _sklearn(Z.numpy(), y.numpy(), 1.0 / (lam * len(y)))
    f_sk = objective(Z, y, torch.tensor(sk.coef_), torch.tensor(sk.intercept_), lam)
    assert abs(path.objective[k] - f_sk) <= 1e-4 * f_sk


def test_ill_conditioned_features_converge_where_a_fixed_step_does_not():
    """Raw planted features (scales 0.1..10, offsets up to 5, a shared low-rank component): the global curvature
    bound is dominated by the offsets and the largest scales, so round 1's fixed step 1/L crawls and stops at
    max_iter; the backtracking step converges to the KKT tolerance in a fraction of the steps."""
    X, y, _ = _planted(2000, 60, 8, seed=3)
    lam = lambda_max(X, y, 8) * 0.01
    fixed = fista(X, y, 8, lam, max_iter=3000, backtrack=False)
    adaptive = fista(X, y, 8, lam, max_iter=3000)
    assert not fixed.converged and fixed.kkt > 5e-3 and fixed.iterations == 3000
    assert adaptive.converged and adaptive.kkt <= 1e-3 and adaptive.iterations < 1500
    assert adaptive.objective <= fixed.objective


def test_non_convergence_is_reported_not_hidden():
    """A path capped at too few steps says which lambdas did not converge, in the path, in the stored probe and on
    its report page."""
    X, y, _ = _planted(2000, 30, 5, seed=4)
    Z = ((X - X.mean(0)) / X.std(0)).float()
    path = l1_path(Z, y, 5, n_lambdas=6, max_iter=3, patience=0)
    assert path.unconverged and all(path.kkt[k] > path.tol for k in path.unconverged)
    assert [not c for c in path.converged] == [k in path.unconverged for k in range(len(path.lambdas))]
    p = fit_probe(X.numpy(), [f"c{k}" for k in y.tolist()], ProbeConfig(n_lambdas=4, max_iter=2, patience=0))
    assert p.path.unconverged and len(p.path.converged) == 4


def test_lambda_max_of_float16_features_over_many_rows():
    """lam_max from float16 X over 1.3M rows equals float64's: the residual is cast to float16 unscaled (R / n is
    about 5e-7 there, float16's subnormal range, whose rounding put lam_max 1.1e-3 off; now 5e-5)."""
    from atlas.probes.solver import lambda_max

    g = torch.Generator().manual_seed(0)
    n = 1_300_000
    X, y = torch.randn(n, 4, generator=g), torch.randint(0, 7, (n,), generator=g)
    X[:, 0] += 0.01 * (y == 1)
    l64 = lambda_max(X.double(), y, 7)
    # brute force from the definition: max |(1/n) sum_i (p_c - [y_i = c]) x_if| at W = 0, b = log class frequencies
    p = torch.bincount(y, minlength=7).double() / n
    R = p[None, :] - torch.nn.functional.one_hot(y, 7).double()  # [n, 7]
    assert abs(l64 - float((R.t() @ X.double() / n).abs().max())) < 1e-12
    assert abs(lambda_max(X.half(), y, 7) - l64) < 2e-4 * l64
