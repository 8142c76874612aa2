"""The sparse-probe path at the paper's scale, on a planted problem built not to flatter the solver.

    python bench/probe_path.py [--n 1281167] [--features 2560] [--classes 1000] [--per-class 4] [--rank 16]
                               [--strength 1.0] [--effect 3.0] [--lambdas 20] [--tol 1e-3] [--max-iter 2000]
                               [--dtype bfloat16] [--device cuda] [--peer-n 20000] [--peer-features 256]
                               [--peer-classes 20] [--quick]

**The problem** (`planted_problem`): n images, each with a class y uniform over --classes.  Every class has
--per-class planted features, drawn at random without replacement within the class (features are shared between
classes when classes x per-class exceeds the features).  An image's raw features are

    x = (U A + E + effect * [f planted for y]) * scale + offset

with U [n, rank] and E [n, F] standard normal, A [rank, F] normal with variance strength^2 / rank (a correlated
low-rank component: each feature's variance from it is about strength^2, shared across all features, as real
activations share a few large directions), and per-feature scale (log-uniform in [0.1, 10]) and offset (uniform
in [0, 5]): unstandardized features whose raw curvature spans four orders of magnitude.

**What is timed** (whole, from the float32 matrix in host memory, as a store's pooled matrix is): a stratified
80/20 split, the train split's per-feature mean and standard deviation (float64 sums), the standardized matrix
moved to the device in --dtype (`atlas.probes.probe.standardize`), and the whole default path
(`atlas.probes.solver.l1_path`, --lambdas from lam_max down to lam_max * 1e-3, every lambda: the validation stop
is off, so all lambdas are solved).  Per lambda it prints the steps, seconds, the KKT violation relative to lambda
(converged when <= --tol; a lambda that stops at --max-iter says so), the working set, the non-zeros and the
validation accuracy; then, at the lambda validation chooses, the recall and precision of the planted support
(recall: planted (class, feature) pairs with a positive weight; precision: non-zero weights that are planted).

**Peers, same process**: scikit-learn's saga (multinomial L1, float64, one thread) on a smaller instance of the
same generator that both can finish (--peer-n images x --peer-features x --peer-classes, seed 1, standardized),
against atlas's solver on the same data at the same lambda (the middle of that problem's path), objectives compared
in float64 (target: within 1e-4 relative); and, on a GPU where cuML is installed (otherwise it says so), cuML's
LogisticRegression (L1, quasi-Newton) on the full standardized train matrix in float32 at the lambda validation
chose, its objective beside atlas's (not yet run: no machine here has cuML).  --no-peer skips them, --peer-only runs only them (saga needs no GPU).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def planted_problem(n: int, features: int, classes: int, per_class: int = 4, rank: int = 16,
                    strength: float = 1.0, effect: float = 3.0, seed: int = 0, device: str = "cpu",
                    chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X [n, F] float32 raw features on ``device``, y [n] int64, planted [C, per_class] int64): module docstring."""
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = dict(device=device, generator=g)
    y = torch.randint(classes, (n,), **rnd)
    planted = torch.stack([torch.randperm(features, **rnd)[:per_class] for _ in range(classes)])  # [C, k]
    A = torch.randn(rank, features, **rnd) * (strength / math.sqrt(rank))  # [rank, F]
    scale = torch.exp(torch.empty(features, device=device).uniform_(math.log(0.1), math.log(10.0), generator=g))
    offset = torch.empty(features, device=device).uniform_(0.0, 5.0, generator=g)
    X = torch.empty(n, features, device=device)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = torch.randn(m, rank, **rnd) @ A + torch.randn(m, features, **rnd)  # [m, F]
        rows = torch.arange(m, device=device)[:, None].expand(m, per_class)
        x[rows, planted[y[i:i + m]]] += effect
        X[i:i + m] = x * scale + offset
    return X, y, planted


def support_scores(W: torch.Tensor, planted: torch.Tensor) -> tuple[float, float, float]:
    """(recall, precision, composition precision) of the planted support in W [C, F]: recall, the planted
    (class, feature) pairs with a positive weight; precision, the non-zero weights that are planted; composition
    precision, the planted share of each class's k largest positive weights (k = planted per class: the
    composition a reader sees, "class = 2.5 n469 + 1.1 n12 + ...")."""
    truth = torch.zeros_like(W, dtype=torch.bool)
    truth.scatter_(1, planted.to(W.device), True)
    nz = W != 0
    recall = float(((W > 0) & truth).sum()) / max(1, int(truth.sum()))
    precision = float((nz & truth).sum()) / max(1, int(nz.sum()))
    top = W.topk(planted.shape[1], dim=1)  # [C, k]
    shown = top.values > 0
    composition = float((shown & truth.gather(1, top.indices)).sum()) / max(1, int(shown.sum()))
    return recall, precision, composition


def split(y: np.ndarray, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.nonzero(y == c)[0])
        val[rows[:max(1, round(fraction * len(rows)))]] = True
    return np.nonzero(~val)[0], np.nonzero(val)[0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peer_saga(args) -> None:
    """saga and atlas on a smaller instance of the same generator, at one lambda (module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from atlas.probes.solver import fista, lambda_max, objective

    X, y, _ = planted_problem(args.peer_n, args.peer_features, args.peer_classes, args.per_class, args.rank,
                              args.strength, args.effect, seed=1)
    Xs, ys = X.double().numpy(), y.numpy()
    Xs = (Xs - Xs.mean(0)) / np.where(Xs.std(0) > 0, Xs.std(0), 1.0)
    Xt, yt = torch.tensor(Xs), torch.tensor(ys)
    c = int(ys.max()) + 1
    lam = lambda_max(Xt, yt, c) * math.sqrt(args.min_ratio)  # the middle of the path (geometric)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        r = fista(Xt, yt, c, lam, tol=1e-6, max_iter=20000)
        ours = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sk = LogisticRegression(C=1.0 / (lam * len(ys)), l1_ratio=1.0, solver="saga", tol=args.sk_tol,
                                max_iter=args.sk_max_iter).fit(Xs, ys)
        theirs = time.perf_counter() - t
    f_sk = objective(Xt, yt, torch.tensor(sk.coef_), torch.tensor(sk.intercept_), lam)
    f_at = objective(Xt, yt, r.W, r.b, lam)
    print(f"\npeer on a smaller instance ({len(ys):,} images x {Xs.shape[1]} features x {c} classes, standardized, "
          f"float64, one thread each, lambda {lam:.4g} = lam_max * {math.sqrt(args.min_ratio):.3g}):")
    print(f"  atlas fista (KKT tol 1e-6): {ours:8.2f} s, objective {f_at:.8f}, {r.iterations} steps, "
          f"converged {r.converged}")
    print(f"  scikit-learn saga (tol {args.sk_tol:g}, <= {args.sk_max_iter} epochs): {theirs:8.2f} s, objective "
          f"{f_sk:.8f}, {sk.n_iter_[0]} epochs")
    print(f"  objective gap (atlas - saga) / saga: {(f_at - f_sk) / f_sk:+.2e}; saga / atlas seconds: "
          f"{theirs / ours:.1f}x")


def peer_cuml(Z: torch.Tensor, y: torch.Tensor, lam: float, f_atlas: float, n_classes: int) -> None:
    """cuML's L1 logistic regression (quasi-Newton, its sklearn-style C = 1 / (lam n)) on the same standardized train
    matrix (float32 on the GPU) at the chosen lambda, timed, its objective in atlas's terms beside atlas's."""
    try:
        from cuml.linear_model import LogisticRegression
    except ImportError:
        print("\ncuML: not installed on this machine (pip install cuml-cu12 needs the network): not run")
        return
    from atlas.probes.solver import objective

    Xf = Z.float()
    sync("cuda")
    t = time.perf_counter()
    try:
        model = LogisticRegression(penalty="l1", C=1.0 / (lam * len(y)), tol=1e-8, max_iter=10000)
        model.fit(Xf, y)
        sync("cuda")
    except Exception as e:  # noqa: BLE001 -- a peer that fails is reported, not fatal
        print(f"\ncuML: failed on the full problem ({type(e).__name__}: {e})")
        return
    took = time.perf_counter() - t
    W = torch.as_tensor(np.asarray(model.coef_), device=Xf.device).reshape(n_classes, -1).float()
    b = torch.as_tensor(np.asarray(model.intercept_), device=Xf.device).reshape(n_classes).float()
    f = objective(Xf, y, W, b, lam)
    print(f"\ncuML LogisticRegression (L1, qn, float32) at the chosen lambda {lam:.4g}: {took:.1f} s, objective {f:.6f} "
          f"(atlas {f_atlas:.6f}; gap {(f_atlas - f) / f:+.2e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1281167)
    ap.add_argument("--features", type=int, default=2560)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--effect", type=float, default=3.0)
    ap.add_argument("--lambdas", type=int, default=20)
    ap.add_argument("--min-ratio", type=float, default=1e-3)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=2000)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float64"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peer-n", type=int, default=20000)
    ap.add_argument("--peer-features", type=int, default=256)
    ap.add_argument("--peer-classes", type=int, default=20)
    ap.add_argument("--sk-tol", type=float, default=1e-8)
    ap.add_argument("--sk-max-iter", type=int, default=10000)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a small problem on the CPU (checks that it runs)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.features, args.classes, args.lambdas, args.device = 4000, 64, 10, 8, "cpu"
        args.dtype, args.peer_n, args.peer_features, args.peer_classes = "float32", 2000, 32, 5
    from atlas.probes.probe import standardize
    from atlas.probes.solver import l1_path

    if args.peer_only:
        peer_saga(args)
        return
    dev = args.device
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    print(f"planted problem: {args.n:,} images x {args.features:,} features x {args.classes:,} classes, "
          f"{args.per_class} planted features per class, low-rank component rank {args.rank} strength "
          f"{args.strength}, effect {args.effect}; device {name}, torch {torch.__version__}, {args.dtype}")
    t = time.perf_counter()
    X, y, planted = planted_problem(args.n, args.features, args.classes, args.per_class, args.rank, args.strength,
                                    args.effect, device=dev)
    X, y, planted = X.cpu().numpy(), y.cpu().numpy(), planted.cpu()
    print(f"generated in {time.perf_counter() - t:.1f} s (not timed below); X float32 in host memory, "
          f"{X.nbytes / 2**30:.1f} GiB")

    t0 = time.perf_counter()
    train, val = split(y)
    dtype = getattr(torch, args.dtype)
    Ztr, mean, std = standardize(X, train, dtype, dev)
    Zval, _, _ = standardize(X, val, dtype, dev, mean=mean, std=std)
    ytr, yval = torch.as_tensor(y[train], device=dev), torch.as_tensor(y[val], device=dev)
    sync(dev)
    t_data = time.perf_counter() - t0
    print(f"split, standardized and on the device in {t_data:.1f} s ({len(train):,} train, {len(val):,} validation)")
    print(f"{'lambda':>10s} {'steps':>6s} {'seconds':>8s} {'KKT/lam':>9s} {'conv':>5s} {'features':>8s} "
          f"{'nnz':>8s} {'val acc':>8s}")

    def show(p) -> None:
        k = len(p.lambdas) - 1
        print(f"{p.lambdas[k]:10.4g} {p.iterations[k]:6d} {p.seconds[k]:8.2f} {p.kkt[k]:9.2e} "
              f"{str(p.converged[k]):>5s} {p.features[k]:8d} {p.nnz[k]:8d} {p.val_acc[k]:8.4f}", flush=True)

    path = l1_path(Ztr, ytr, args.classes, Zval, yval, n_lambdas=args.lambdas, min_ratio=args.min_ratio,
                   tol=args.tol, max_iter=args.max_iter, patience=0, on_lambda=show)
    sync(dev)
    whole = time.perf_counter() - t0
    best = path.best
    recall, precision, composition = support_scores(path.W[best], planted)
    bad = path.unconverged
    print(f"whole: {whole:.1f} s (data to the device {t_data:.1f} s, path {sum(path.seconds):.1f} s); "
          f"{len(path.lambdas) - len(bad)} of {len(path.lambdas)} lambdas converged to KKT/lambda <= {args.tol:g}"
          + (f"; NOT converged (max-iter {args.max_iter}): lambdas {', '.join(f'{path.lambdas[k]:.4g}' for k in bad)}"
             if bad else ""))
    print(f"chosen by validation: lambda {path.lambdas[best]:.4g} (#{best + 1}), val acc {path.val_acc[best]:.4f}, "
          f"{path.nnz[best]:,} non-zeros ({path.nnz[best] / args.classes:.1f} per class); planted support: "
          f"recall {recall:.3f}, precision {precision:.3f} (of all non-zeros), {composition:.3f} (of the compositions: "
          f"each class's {args.per_class} largest positive weights)")
    print("planted support along the path (recall, precision, composition precision): " + "; ".join(
        f"#{k + 1} " + " ".join(f"{v:.2f}" for v in support_scores(w, planted)) for k, w in enumerate(path.W)))
    del Ztr, Zval
    if not args.no_peer:
        if dev.startswith("cuda"):
            Ztr, _, _ = standardize(X, train, torch.float32, dev, mean=mean, std=std)
            peer_cuml(Ztr, ytr, path.lambdas[best], path.objective[best], args.classes)
            del Ztr
        else:
            print("\ncuML: a GPU peer; not run on the CPU")
        peer_saga(args)


if __name__ == "__main__":
    main()
