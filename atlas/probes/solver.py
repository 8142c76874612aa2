"""L1-regularized multinomial logistic regression by FISTA, in torch (CPU or GPU).

Objective, for features X [n, F], labels y [n] in 0..C-1, weights W [C, F] and intercepts b [C]:

    f(W, b) = (1/n) * sum_i CE(softmax(X_i W^T + b), y_i) + lam * ||W||_1      (b is not penalized)

scikit-learn's ``LogisticRegression(penalty="l1", C=C)`` minimizes n * C times the same function with
``lam = 1 / (C * n)``; `sklearn_lambda` converts.

The solver is accelerated proximal gradient (FISTA) with a fixed step 1/L, L = ||[X 1]||_2^2 / (2n) (a bound
on the curvature of the softmax cross-entropy), gradient-test adaptive restarts (O'Donoghue & Candes 2015),
and a stop when the relative change of f per step stays under ``tol`` over two checks.  `l1_path` runs it along a
geometric path of lambdas from lam_max (where W = 0 is optimal) down, warm-starting each from the last, and
stops early once validation accuracy has not improved for ``patience`` steps.

X may be float64, float32, or (on a GPU, to halve its memory: 1.28M x 2560 features is 6.5 GB) bfloat16 or
float16; then the products X W^T and R^T X run in X's dtype with float32 accumulation and results, and W, b
are float32.  The softmax, cross-entropy and R = (softmax - onehot(y)) / n come from one fused pass
(atlas.kernels.softmax_ce: a Triton kernel on CUDA, torch elsewhere); labels stay integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..kernels.softmax_ce import softmax_xent

HALF = (torch.bfloat16, torch.float16)
_HAS_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()  # torch.mm(..., out_dtype=): torch >= 2.9


def sklearn_lambda(C: float, n: int) -> float:
    """The lam of this module's objective that matches scikit-learn's C on n training rows."""
    return 1.0 / (C * n)


def objective(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, lam: float) -> float:
    """f(W, b) above.  X: [n, F]; y: [n]; W: [C, F]; b: [C]."""
    loss, _ = softmax_xent(logits(X, W, b, exact=True), y, grad=False)  # [n]
    return float(loss.mean() + lam * W.abs().sum())


def param_dtype(X: torch.Tensor) -> torch.dtype:
    """W and b are float32 for half-precision features, else of X's dtype."""
    return torch.float32 if X.dtype in HALF else X.dtype


def _mm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B; for half-precision A, B is cast to A's dtype and the product accumulated and returned in
    float32 (tensor cores on CUDA; on the CPU, a float32 product)."""
    if A.dtype not in HALF:
        return A @ B
    if B.dim() == 1:
        return _mm(A, B[:, None])[:, 0]
    if A.is_cuda and _HAS_MM_OUT_DTYPE:
        return torch.mm(A, B.to(A.dtype), out_dtype=torch.float32)
    return A.float() @ B.to(A.dtype).float()  # the CPU, or a torch without mm(out_dtype=) (before 2.9): float32


def logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """[n, C] = X W^T + b, in W's dtype (float32 for half-precision X).  For half-precision X the product
    rounds W to X's dtype; ``exact`` adds the product with the rounding's remainder, which leaves W with 16
    significant bits (bfloat16): the objective needs this, or its value jitters by more than the stop test's
    tolerance as W's rounding changes from step to step."""
    if not exact or X.dtype not in HALF:
        return _mm(X, W.t()) + b
    hi = W.to(X.dtype)
    return _mm(X, hi.t()) + _mm(X, (W - hi.to(W.dtype)).t()) + b


def _smooth_grad(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy value and gradients.  y: [n] class indices.  Returns (loss, dW [C, F], db [C]).

    R = (softmax - onehot(y)) / n comes from one fused pass over the logits (atlas.kernels.softmax_ce), in
    X's dtype, so that dW = R^T X runs in X's precision with float32 accumulation."""
    n = X.shape[0]
    loss, R = softmax_xent(logits(X, W, b), y, scale=1.0 / n, grad_dtype=X.dtype)  # [n], [n, C]
    return loss.sum() / n, _mm(R.t(), X).to(W.dtype), R.sum(0, dtype=W.dtype)


def lipschitz(X: torch.Tensor, iters: int = 50) -> float:
    """||[X 1]||_2^2 / (2n) by power iteration (with a 1% margin)."""
    n = X.shape[0]
    v = torch.ones(X.shape[1] + 1, dtype=param_dtype(X), device=X.device)
    for _ in range(iters):
        u = _mm(X, v[:-1]) + v[-1]
        v = torch.cat([_mm(X.t(), u), u.sum().view(1)])
        v = v / v.norm()
    u = _mm(X, v[:-1]) + v[-1]
    return 1.01 * float(u.norm() ** 2) / (2 * n)


@dataclass
class FistaResult:
    W: torch.Tensor
    b: torch.Tensor
    objective: float
    iterations: int
    converged: bool


def fista(X: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, W0: torch.Tensor | None = None,
          b0: torch.Tensor | None = None, L: float | None = None, tol: float = 1e-7,
          max_iter: int = 5000, check_every: int = 5) -> FistaResult:
    """Minimize f(W, b) for one lam.  X: [n, F] float64, float32, bfloat16 or float16 (W, b: float32 for the
    last two, see `param_dtype`); y: [n] int64.

    One gradient per step; momentum restarts when it points uphill (the gradient test of O'Donoghue &
    Candes, which needs no function values); f is evaluated every ``check_every`` steps for the stop test."""
    nf = X.shape[1]
    L = L or lipschitz(X)
    step = 1.0 / L
    z = dict(dtype=param_dtype(X), device=X.device)
    W = W0.to(**z, copy=True) if W0 is not None else torch.zeros(n_classes, nf, **z)
    b = b0.to(**z, copy=True) if b0 is not None else torch.zeros(n_classes, **z)
    zW, zb, t = W.clone(), b.clone(), 1.0
    f_old, calm = objective(X, y, W, b, lam), 0
    for it in range(1, max_iter + 1):
        _, gW, gb = _smooth_grad(X, y, zW, zb)
        W_new = zW - step * gW
        W_new = torch.sign(W_new) * torch.clamp(W_new.abs() - step * lam, min=0)  # prox of lam * ||.||_1
        b_new = zb - step * gb
        uphill = float(((zW - W_new) * (W_new - W)).sum() + ((zb - b_new) * (b_new - b)).sum()) > 0
        t_new = 1.0 if uphill else (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = 0.0 if uphill else (t - 1) / t_new
        zW = W_new + mom * (W_new - W)
        zb = b_new + mom * (b_new - b)
        W, b, t = W_new, b_new, t_new
        if it % check_every == 0:
            f_new = objective(X, y, W, b, lam)
            calm = calm + 1 if abs(f_old - f_new) <= tol * check_every * max(1.0, abs(f_new)) else 0
            f_old = f_new
            if calm >= 2:
                return FistaResult(W, b, f_new, it, True)
    return FistaResult(W, b, objective(X, y, W, b, lam), max_iter, False)


@dataclass
class ProbePath:
    """One fitted probe per lambda, largest lambda (sparsest) first."""

    lambdas: list[float] = field(default_factory=list)
    W: list[torch.Tensor] = field(default_factory=list)  # [C, F] each
    b: list[torch.Tensor] = field(default_factory=list)  # [C] each
    nnz: list[int] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    best: int = 0  # index of the lambda with the best validation accuracy


def lambda_max(X: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """The smallest lam for which W = 0 (intercepts only) is optimal: max |grad_W f(0, b*)|."""
    counts = torch.bincount(y, minlength=n_classes).to(param_dtype(X))
    p = (counts / counts.sum()).clamp(min=1e-12)
    b = torch.log(p)  # optimal intercepts when W = 0
    _, gW, _ = _smooth_grad(X, y, torch.zeros(n_classes, X.shape[1], dtype=b.dtype, device=X.device), b)
    return float(gW.abs().max())


def _accuracy(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> float:
    return float((logits(X, W, b).argmax(1) == y).to(torch.float64).mean()) if len(y) else float("nan")


def l1_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, X_val: torch.Tensor | None = None,
            y_val: torch.Tensor | None = None, n_lambdas: int = 20, min_ratio: float = 1e-3, tol: float = 1e-6,
            max_iter: int = 2000, patience: int = 4, progress: Callable[[int, int], None] | None = None) -> ProbePath:
    """Fit along a geometric lambda path from lam_max down to lam_max * min_ratio, warm-started.  ``progress``:
    called with (lambdas done, n_lambdas) after each lambda (and (n, n) when validation stops the path early)."""
    L = lipschitz(X)
    lam0 = lambda_max(X, y, n_classes)
    lams = [lam0 * min_ratio ** (k / max(1, n_lambdas - 1)) for k in range(n_lambdas)]
    path = ProbePath()
    W = b = None
    since_best = 0
    for lam in lams:
        r = fista(X, y, n_classes, lam, W, b, L=L, tol=tol, max_iter=max_iter)
        W, b = r.W, r.b
        path.lambdas.append(lam)
        path.W.append(W.detach().cpu())
        path.b.append(b.detach().cpu())
        path.nnz.append(int((W != 0).sum()))
        path.train_acc.append(_accuracy(X, y, W, b))
        path.val_acc.append(_accuracy(X_val, y_val, W, b) if X_val is not None else path.train_acc[-1])
        path.objective.append(r.objective)
        path.iterations.append(r.iterations)
        if progress:
            progress(len(path.lambdas), n_lambdas)
        if path.val_acc[-1] > path.val_acc[path.best] + 1e-12:
            path.best, since_best = len(path.lambdas) - 1, 0
        else:
            since_best += 1
            if X_val is not None and since_best >= patience:
                break
    if progress and len(path.lambdas) < n_lambdas:
        progress(n_lambdas, n_lambdas)  # stopped early: the rest of the path is not needed
    return path
