"""The sparse probe solver on a GPU: (i) the L1 path at ImageNet scale; (ii) against scikit-learn's saga on a
problem both can finish.

    python bench/probe_gpu.py [--n 1280000 --features 2560 --classes 1000 --lambdas 3 --max-iter 200]
                              [--sk-n 20000 --sk-features 256 --sk-classes 50 --C 0.05] [--skip-path]
                              [--skip-sklearn] [--compile] [--quick]

(i) Random bfloat16 features X [n, F] on the GPU (1.28M x 2560 is 6.5 GB), labels from a planted sparse weight
matrix (8 features per class) plus Gumbel noise.  Times the Lipschitz bound, lam_max, one gradient (the fused
softmax kernel vs the torch reference, and the two products), then fista along --lambdas lambdas from lam_max
down to lam_max * --min-ratio, warm-started as atlas.probes.solver.l1_path does, each capped at --max-iter steps.
(ii) The same solver (float32 and bfloat16 X on the GPU) vs scikit-learn's saga (multinomial L1; on this host's
CPU) at one C, lambda = sklearn_lambda(C, n): seconds, their ratio, and both objectives evaluated in float64
(bench/probe_vs_sklearn.py does the same on the CPU).  saga is single-threaded: the default 20000 x 256 x 50 took
51 s on a shared 2-core development machine, 20000 x 512 x 100 took 540 s.  --quick: small sizes on the CPU,
to check that the script runs.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from atlas.probes.solver import (
    _gradient,
    fista,
    lambda_max,
    lipschitz,
    logits,
    objective,
    param_dtype,
    sklearn_lambda,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(fn, device, repeat: int = 1):
    """(result of the last call, seconds per call)."""
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return out, (time.perf_counter() - t) / repeat


def planted(n, f, c, device, dtype, seed=0, chunk=131072):
    """X [n, F] standard normal in dtype, y [n] = argmax(X W^T + Gumbel) for a sparse W (8 features a class)."""
    g = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(n, f, device=device, dtype=dtype, generator=g)
    W = torch.zeros(c, f, device=device, dtype=param_dtype(X))
    for k in range(c):
        W[k, torch.randperm(f, device=device, generator=g)[:8]] = torch.randn(8, device=device, generator=g).to(W) * 1.5
    y = torch.empty(n, dtype=torch.int64, device=device)
    for i in range(0, n, chunk):  # [chunk, C] logits at a time
        z = logits(X[i:i + chunk], W, torch.zeros_like(W[:, 0]))
        u = torch.rand(z.shape, device=device, generator=g).clamp_(1e-12, 1 - 1e-7)
        y[i:i + chunk] = (z - torch.log(-torch.log(u))).argmax(1)
    return X, y


def softmax_bench(args, device) -> None:
    """The softmax/CE pass alone on [n, classes] bfloat16 logits: torch eager, torch.compile, the Triton kernel."""
    from atlas.kernels.softmax_ce import softmax_xent, softmax_xent_torch

    n, c = args.n, args.classes
    gen = torch.Generator(device=device).manual_seed(0)
    z = (torch.randn(n, c, device=device, generator=gen) * 3).bfloat16()
    y = torch.randint(0, c, (n,), device=device, generator=gen)
    print(f"\nthe softmax/CE pass on {n} x {c} bfloat16 logits (loss and gradient):")
    rows = {"torch eager": lambda: softmax_xent_torch(z, y, 1.0 / n, torch.bfloat16),
            "torch.compile": torch.compile(lambda: softmax_xent_torch(z, y, 1.0 / n, torch.bfloat16))}
    if device.type == "cuda":
        rows["triton kernel"] = lambda: softmax_xent(z, y, 1.0 / n, torch.bfloat16, backend="triton")
    for label, fn in rows.items():
        fn()  # compile / warm up
        _, t = clock(fn, device, repeat=5)
        print(f"  {label:14s} {t * 1e3:8.2f} ms")


def l1_path_bench(args, device) -> None:
    n, f, c = args.n, args.features, args.classes
    X, y = planted(n, f, c, device, torch.bfloat16)
    print(f"\n(i) L1 path: X {n} x {f} bfloat16 ({X.numel() * 2 / 1e9:.1f} GB), {c} classes, on {device}")
    L, t_l = clock(lambda: lipschitz(X), device)
    lam0, t_m = clock(lambda: lambda_max(X, y, c), device)
    print(f"lipschitz {t_l:.2f} s (L = {L:.4g}); lambda_max {t_m:.2f} s (lam0 = {lam0:.4g})")
    W = torch.zeros(c, f, device=device)
    b = torch.zeros(c, device=device)
    z = logits(X, W, b)
    for backend in ("torch", "triton") if device.type == "cuda" else ("torch",):
        os.environ["ATLAS_KERNELS"] = backend
        _, t_g = clock(lambda: _gradient(logits(X, W, b), X, y, W.dtype), device, repeat=3)
        from atlas.kernels.softmax_ce import softmax_xent

        _, t_s = clock(lambda: softmax_xent(z, y, 1.0 / n, torch.bfloat16), device, repeat=3)
        print(f"one gradient, softmax by {backend:6s}: {t_g * 1e3:8.1f} ms (the softmax/CE pass alone {t_s * 1e3:7.1f} ms)")
    os.environ.pop("ATLAS_KERNELS")
    if args.compile:  # the reference softmax/CE pass through torch.compile: the second baseline
        from atlas.kernels.softmax_ce import softmax_xent_torch

        fused = torch.compile(softmax_xent_torch, dynamic=False)
        fused(z, y, 1.0 / n, torch.bfloat16)  # compile
        _, t_c = clock(lambda: fused(z, y, 1.0 / n, torch.bfloat16), device, repeat=3)
        print(f"the softmax/CE pass by torch.compile of the reference: {t_c * 1e3:7.1f} ms")
    _, t_mm = clock(lambda: logits(X, W, b), device, repeat=3)
    print(f"  of which X W^T: {t_mm * 1e3:.1f} ms ({2 * n * f * c / t_mm / 1e12:.0f} TFLOP/s); "
          f"peak GPU memory so far {torch.cuda.max_memory_allocated() / 1e9 if device.type == 'cuda' else 0:.1f} GB")
    del z
    lams = [lam0 * args.min_ratio ** (k / max(1, args.lambdas - 1)) for k in range(args.lambdas)]
    print(f"{'lambda':>10s} {'iters':>6s} {'seconds':>8s} {'ms/iter':>8s} {'nonzeros':>9s} {'objective':>10s} "
          f"{'train acc':>9s} {'converged':>9s}")
    W = b = None
    total = 0.0
    for lam in lams:
        r, dt = clock(lambda: fista(X, y, c, lam, W, b, L=L, tol=args.tol, max_iter=args.max_iter), device)
        W, b, total = r.W, r.b, total + dt
        acc = float((logits(X, W, b).argmax(1) == y).float().mean())
        print(f"{lam:10.3g} {r.iterations:6d} {dt:8.2f} {dt / r.iterations * 1e3:8.1f} {int((W != 0).sum()):9d} "
              f"{r.objective:10.5f} {acc:9.3f} {str(r.converged):>9s}")
    print(f"path total {total:.1f} s for {len(lams)} lambdas (+ {t_l + t_m:.1f} s for L and lam0); peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 1e9 if device.type == 'cuda' else 0:.1f} GB")


def sklearn_bench(args, device) -> None:
    import warnings

    import sklearn
    from sklearn.linear_model import LogisticRegression

    n, f, c = args.sk_n, args.sk_features, args.sk_classes
    Xg, yg = planted(n, f, c, torch.device("cpu"), torch.float64, seed=1)
    X, y = Xg.numpy(), yg.numpy()
    lam = sklearn_lambda(args.C, n)
    print(f"\n(ii) vs scikit-learn {sklearn.__version__}: {n} x {f} x {c} classes, C = {args.C} (lambda = {lam:.3g}); "
          f"ours on {device}, sklearn saga on the CPU")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        Xt, yt = Xg.to(device, dtype), yg.to(device)
        fista(Xt, yt, c, lam, max_iter=3)  # warm-up (kernel compilation)
        r, dt = clock(lambda: fista(Xt, yt, c, lam, tol=args.tol, max_iter=20000), device)
        f64 = objective(Xg, yg, r.W.double().cpu(), r.b.double().cpu(), lam)
        rows.append((f"atlas fista, X {str(dtype)[6:]}", dt, f64, int((r.W != 0).sum()), r.iterations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = LogisticRegression(C=args.C, l1_ratio=1.0, solver="saga", tol=args.sk_tol, max_iter=args.sk_max_iter)
        t = time.perf_counter()
        m = est.fit(X, y)
        dt = time.perf_counter() - t
    f64 = objective(Xg, yg, torch.tensor(m.coef_), torch.tensor(m.intercept_), lam)
    rows.append((f"sklearn saga (tol {args.sk_tol:g})", dt, f64, int((m.coef_ != 0).sum()), int(np.max(m.n_iter_))))
    print(f"{'solver':28s} {'seconds':>9s} {'objective':>12s} {'nonzeros':>9s} {'iters':>6s}")
    for name, dt, obj, nnz, it in rows:
        print(f"{name:28s} {dt:9.2f} {obj:12.6f} {nnz:9d} {it:6d}")
    saga = rows[-1]
    print(f"speed-up vs saga: float32 {saga[1] / rows[0][1]:.1f}x, bfloat16 {saga[1] / rows[1][1]:.1f}x; objective "
          f"gap vs saga: float32 {(rows[0][2] - saga[2]) / saga[2]:+.1e}, bfloat16 {(rows[1][2] - saga[2]) / saga[2]:+.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_280_000)
    ap.add_argument("--features", type=int, default=2560)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--lambdas", type=int, default=3)
    ap.add_argument("--min-ratio", type=float, default=0.1)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--sk-n", type=int, default=20000)
    ap.add_argument("--sk-features", type=int, default=256)
    ap.add_argument("--sk-classes", type=int, default=50)
    ap.add_argument("--C", type=float, default=0.05)
    ap.add_argument("--sk-tol", type=float, default=1e-4)
    ap.add_argument("--sk-max-iter", type=int, default=10000)
    ap.add_argument("--compile", action="store_true", help="also time the torch softmax/CE under torch.compile")
    ap.add_argument("--skip-path", action="store_true")
    ap.add_argument("--softmax-only", action="store_true", help="only the softmax/CE pass: eager, compiled, kernel")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes on the CPU, to check that the script runs")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.quick:
        args.n, args.features, args.classes, args.max_iter = 4000, 64, 10, 20
        args.sk_n, args.sk_features, args.sk_classes = 1000, 16, 4
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} CPU threads")
    if args.softmax_only:
        softmax_bench(args, device)
        return
    if not args.skip_path:
        l1_path_bench(args, device)
    if not args.skip_sklearn:
        sklearn_bench(args, device)


if __name__ == "__main__":
    main()
