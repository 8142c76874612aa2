"""Sparse probe solver vs scikit-learn's L1 solvers on the same problem, same machine, one run.

    python bench/probe_vs_sklearn.py [--n 20000] [--features 512] [--classes 41] [--C 0.05] [--threads 1,2]
                                     [--saga-dtypes float64,float32] [--no-liblinear] [--quick]

One regularization strength (one lambda, no path): C = --C, lambda = 1 / (C n) in atlas's objective.  Data:
Gaussian features with a sparse true weight matrix (every class uses 8 features), labels drawn from its softmax.
Each solver stops at its own default-style test: atlas's FISTA when its KKT conditions hold to --tol relative to
lambda (at most --max-iter steps), saga when the largest change of a coefficient, relative to the
largest coefficient, is under --sk-tol (at most --sk-max-iter epochs); both are printed, with the final objectives
(computed the same way, in float64) and their gap, since the two tests do not stop at the same accuracy.

Every row says its threads and precision.  atlas runs at each of --threads (torch.set_num_threads) in float64
and float32; scikit-learn's saga is single-threaded (its n_jobs only splits one-vs-rest classes) and runs with
BLAS held to one thread (threadpoolctl), on X in each of --saga-dtypes; liblinear (one-vs-rest L1: another
problem) is timed for reference.  Then the comparisons:

- matched: atlas at 1 thread against saga, same precision (float64 and float32): the same work per core.
  Both at 2 threads is not possible: saga has no multi-threaded mode for one multinomial problem;
- best-effort: atlas's fastest row (any threads, any precision) against saga's fastest row.

``--quick``: 2,000 x 32 x 5 classes: checks that the script runs (seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Row:
    solver: str
    threads: int
    precision: str
    stop: str
    seconds: float
    objective: float
    nonzeros: int
    iterations: int


def problem(n: int, f: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X [n, f] float64 Gaussian; y [n] from a sparse W [c, f] (8 features per class) plus Gumbel noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    W = np.zeros((c, f))
    for k in range(c):
        W[k, rng.choice(f, 8, replace=False)] = rng.normal(size=8) * 1.5
    return X, np.argmax(X @ W.T + rng.gumbel(size=(n, c)), axis=1)


def atlas_rows(X: np.ndarray, y: np.ndarray, c: int, lam: float, threads: list[int], args) -> list[Row]:
    from atlas.probes.solver import fista, objective

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    X64, y64 = torch.tensor(X), torch.tensor(y)
    rows, before = [], torch.get_num_threads()
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            for dtype in (torch.float64, torch.float32):
                Xt, yt = X64.to(args.device, dtype), y64.to(args.device)
                fista(Xt, yt, c, lam, max_iter=3)  # warm-up
                sync()
                t = time.perf_counter()
                r = fista(Xt, yt, c, lam, tol=args.tol, max_iter=args.max_iter)
                sync()
                dt = time.perf_counter() - t
                obj = objective(X64, y64, r.W.double().cpu(), r.b.double().cpu(), lam)
                rows.append(Row("atlas fista" + (f" ({args.device})" if cuda else ""), nt,
                                str(dtype).removeprefix("torch."), f"KKT/lambda {args.tol:g}, <= {args.max_iter}",
                                dt, obj, int((r.W != 0).sum()), r.iterations))
    finally:
        torch.set_num_threads(before)
    return rows


def sklearn_rows(X: np.ndarray, y: np.ndarray, lam: float, args) -> list[Row]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from threadpoolctl import threadpool_limits

    from atlas.probes.solver import objective

    runs = [("saga", dt) for dt in args.saga_dtypes.split(",") if dt] + [("liblinear", "float64")] * args.liblinear
    rows = []
    for solver, dtype in runs:
        est = LogisticRegression(C=args.C, l1_ratio=1.0, solver=solver, tol=args.sk_tol, max_iter=args.sk_max_iter)
        if solver == "liblinear":  # binary only: one-vs-rest, a different problem (timed for reference)
            est = OneVsRestClassifier(est)
        Xs = X.astype(dtype)
        with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t = time.perf_counter()
            m = est.fit(Xs, y)
            dt = time.perf_counter() - t
        ests = m.estimators_ if solver == "liblinear" else [m]
        coef = np.concatenate([e.coef_ for e in ests]).astype(np.float64)
        icpt = np.concatenate([np.atleast_1d(e.intercept_) for e in ests]).astype(np.float64)
        iters = max(int(np.max(e.n_iter_)) for e in ests)
        obj = objective(torch.tensor(X), torch.tensor(y), torch.tensor(coef), torch.tensor(icpt), lam)
        unconverged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        stop = (f"{'rel. coef change' if solver == 'saga' else 'liblinear tol'} {args.sk_tol:g}, <= {args.sk_max_iter}"
                + (" NOT converged" if unconverged else ""))
        name = "sklearn saga (multinomial)" if solver == "saga" else "sklearn liblinear (one-vs-rest)"
        rows.append(Row(name, 1, dtype, stop, dt, obj, int((coef != 0).sum()), iters))
    return rows


def compare(label: str, ours: Row, theirs: Row, setting: str) -> None:
    print(f"{label}: atlas {ours.threads} thread(s) {ours.precision} {ours.seconds:.3f} s vs saga {theirs.threads} "
          f"thread {theirs.precision} {theirs.seconds:.3f} s: {theirs.seconds / ours.seconds:.2f}x; objective gap "
          f"(atlas - saga) / saga {(ours.objective - theirs.objective) / theirs.objective:+.2e} [{setting}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--classes", type=int, default=41)
    ap.add_argument("--C", type=float, default=0.05)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="atlas's torch thread counts, comma-separated")
    ap.add_argument("--tol", type=float, default=1e-3, help="atlas: KKT violation relative to lambda (its stop)")
    ap.add_argument("--max-iter", type=int, default=20000)
    ap.add_argument("--saga-dtypes", default="float64,float32", help="X's dtype for saga, comma-separated")
    ap.add_argument("--sk-tol", type=float, default=1e-4)
    ap.add_argument("--sk-max-iter", type=int, default=10000)
    ap.add_argument("--no-liblinear", dest="liblinear", action="store_false")
    ap.add_argument("--quick", action="store_true", help="a small problem (checks that the script runs)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.features, args.classes = 2000, 32, 5
    threads = sorted({int(t) for t in args.threads.split(",") if t})
    if args.device != "cpu":
        threads = threads[-1:]  # the solver runs on the device: one row per precision

    import sklearn

    from atlas.probes.solver import sklearn_lambda

    n, f, c = args.n, args.features, args.classes
    X, y = problem(n, f, c)
    lam = sklearn_lambda(args.C, n)
    print(f"problem: {n} rows x {f} features x {c} classes (Gaussian, seed 0); one lambda: C={args.C} "
          f"(lambda={lam:.3g}), no path; torch {torch.__version__}, sklearn {sklearn.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, atlas on {args.device}")
    rows = atlas_rows(X, y, c, lam, threads, args) + sklearn_rows(X, y, lam, args)
    print(f"{'solver':32s} {'threads':>7s} {'precision':9s} {'stop':36s} {'seconds':>9s} {'objective':>11s} "
          f"{'nonzeros':>8s} {'iters':>6s}")
    for r in rows:
        print(f"{r.solver:32s} {r.threads:7d} {r.precision:9s} {r.stop:36s} {r.seconds:9.3f} {r.objective:11.6f} "
              f"{r.nonzeros:8d} {r.iterations:6d}")
    ours = [r for r in rows if r.solver.startswith("atlas")]
    saga = [r for r in rows if "saga" in r.solver]
    if not saga:
        return
    setting = (f"{n} x {f} x {c}, 1 lambda (C={args.C}), atlas to KKT/lambda {args.tol:g}, saga to rel. coef "
               f"change {args.sk_tol:g}")
    print("ratios: saga seconds / atlas seconds")
    for r in saga:
        one = [o for o in ours if o.solver == "atlas fista" and o.threads == 1 and o.precision == r.precision]
        if one:
            compare(f"matched ({r.precision}, 1 thread each)", one[0], r, setting)
    print("matched at 2 threads each: not possible (saga is single-threaded on one multinomial problem)")
    compare("best-effort (each side's fastest row)", min(ours, key=lambda o: o.seconds),
            min(saga, key=lambda o: o.seconds), setting)


if __name__ == "__main__":
    main()
