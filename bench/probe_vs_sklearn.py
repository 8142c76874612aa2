"""Sparse probe solver vs scikit-learn's L1 solvers on the same problem, same machine, one run.

    python bench/probe_vs_sklearn.py [--n 20000] [--features 512] [--classes 41] [--C 0.05] [--device cpu]

Prints, for one regularization strength: wall time and final objective of atlas's FISTA (float64 and float32),
scikit-learn's saga (multinomial L1, the only sklearn solver for that problem) and liblinear (one-vs-rest
L1: another problem, timed for reference), and the time ratios.  Data: Gaussian features with a sparse true
weight matrix (every class uses 8 features), labels drawn from its softmax.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--classes", type=int, default=41)
    ap.add_argument("--C", type=float, default=0.05)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()

    import sklearn
    from sklearn.linear_model import LogisticRegression

    from atlas.probes.solver import fista, objective, sklearn_lambda

    rng = np.random.default_rng(0)
    n, f, c = args.n, args.features, args.classes
    X = rng.normal(size=(n, f))
    W = np.zeros((c, f))
    for k in range(c):
        W[k, rng.choice(f, 8, replace=False)] = rng.normal(size=8) * 1.5
    y = np.argmax(X @ W.T + rng.gumbel(size=(n, c)), axis=1)
    lam = sklearn_lambda(args.C, n)
    print(f"problem: {n} rows x {f} features x {c} classes, C={args.C} (lambda={lam:.3g}); torch {torch.__version__}, "
          f"sklearn {sklearn.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, device {args.device}")
    rows = []
    Xd = torch.tensor(X, device=args.device)
    yd = torch.tensor(y, device=args.device)
    for dtype in (torch.float64, torch.float32):
        Xt = Xd.to(dtype)
        fista(Xt, yd, c, lam, max_iter=3)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        r = fista(Xt, yd, c, lam, tol=args.tol, max_iter=20000)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        obj = objective(torch.tensor(X), torch.tensor(y), r.W.double().cpu(), r.b.double().cpu(), lam)
        rows.append((f"atlas fista {str(dtype).replace('torch.', '')}", dt, obj, int((r.W != 0).sum()), r.iterations))
    from sklearn.multiclass import OneVsRestClassifier

    for solver in ("saga", "liblinear"):
        est = LogisticRegression(C=args.C, l1_ratio=1.0, solver=solver, tol=1e-4, max_iter=10000)
        if solver == "liblinear":  # binary only: one-vs-rest, a different problem (timed for reference)
            est = OneVsRestClassifier(est)
        t = time.perf_counter()
        m = est.fit(X, y)
        dt = time.perf_counter() - t
        coef = np.concatenate([e.coef_ for e in m.estimators_]) if solver == "liblinear" else m.coef_
        icpt = np.concatenate([e.intercept_ for e in m.estimators_]) if solver == "liblinear" else m.intercept_
        iters = max(int(np.max(e.n_iter_)) for e in m.estimators_) if solver == "liblinear" else int(np.max(m.n_iter_))
        obj = objective(torch.tensor(X), torch.tensor(y), torch.tensor(coef), torch.tensor(icpt), lam)
        rows.append((f"sklearn {solver}" + (" (one-vs-rest)" if solver == "liblinear" else ""), dt, obj,
                     int((coef != 0).sum()), iters))
    print(f"{'solver':32s} {'seconds':>9s} {'objective':>12s} {'nonzeros':>9s} {'iters':>6s}")
    for name, dt, obj, nnz, it in rows:
        print(f"{name:32s} {dt:9.2f} {obj:12.6f} {nnz:9d} {it:6d}")
    saga = rows[2][1]
    print(f"speed-up vs sklearn saga: float64 {saga / rows[0][1]:.1f}x, float32 {saga / rows[1][1]:.1f}x; "
          f"objective gap (fista64 - saga) / saga: {(rows[0][2] - rows[2][2]) / rows[2][2]:+.2e}")


if __name__ == "__main__":
    main()
