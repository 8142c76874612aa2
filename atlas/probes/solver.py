"""L1-regularized multinomial logistic regression by FISTA, in torch (CPU or GPU).

Objective, for features X [n, F], labels y [n] in 0..C-1, weights W [C, F] and intercepts b [C]:

    f(W, b) = (1/n) * sum_i CE(softmax(X_i W^T + b), y_i) + lam * ||W||_1      (b is not penalized)

scikit-learn's ``LogisticRegression(penalty="l1", C=C)`` minimizes n * C times the same function with
``lam = 1 / (C * n)``; `sklearn_lambda` converts.

The solver is accelerated proximal gradient (FISTA) with a backtracking step.  Each step first tries 1/(SHRINK L)
with L the last accepted curvature (at the start half the last lambda's, or a quarter of ||[X 1]||_2^2 / (2n), a
global bound on the softmax cross-entropy's curvature that is far too pessimistic on correlated, unstandardized
features), and L doubles until the sufficient-decrease test holds; the momentum follows the changes of L
(Scheinberg, Goldfarb & Bai 2014) and restarts when it points against the step just taken (O'Donoghue & Candes
2015, the gradient scheme; their function scheme restarts spuriously where f's values differ by less than their
rounding, and took 5x the time on the planted problem of bench/probe_path.py).  Where the
change of f is below the rounding of its float32 sums (NOISE), the test compares gradients instead (as TFOCS
does): otherwise rounding either accepts steps that are too long or doubles L without end.  The logits of the
extrapolated point are a linear combination of the last two iterates' logits, so a step costs one forward product
X W^T and one backward R^T X (for half-precision X each is two: a head and a remainder, for 16 significant
bits; the softmax pass writes R's head and remainder itself, and on CUDA the second product of each pair adds the
first in its epilogue).  It stops when the KKT conditions hold to ``tol`` relative to lam (`kkt_violation`): every weight's
gradient within tol * lam of -lam * sign(w), every zero weight's gradient at most lam (1 + tol), every intercept's
gradient at most tol * lam; or at ``max_iter``, with ``converged=False`` and the violation it reached.

`l1_path` runs it along a geometric path of lambdas from lam_max (where W = 0 is optimal) down, warm-started,
on a working set of features: the sequential strong rule (Tibshirani et al. 2012) keeps the features whose
largest class gradient at the last solution is at least 2 lam - lam_prev, the solver runs on those columns only,
and a KKT check over all features adds any violator and solves again (the working set to INNER * tol, so that
the check over all features, whose products round differently, passes at tol).  Inactive features then cost one
product per round, not one per step.  ``patience`` stops the path once validation accuracy has not improved for that
many lambdas (0: the whole path).

X may be float64, float32, or (on a GPU, to halve its memory: 1.28M x 2560 features is 6.5 GB) bfloat16 or
float16; then the products X W^T and R^T X run in X's dtype with float32 accumulation and results, and W, b
are float32.  The softmax, cross-entropy and R = (softmax - onehot(y)) / n come from one fused pass
(atlas.kernels.softmax_ce: a Triton kernel on CUDA, torch elsewhere); labels stay integers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..kernels.softmax_ce import softmax_xent, split_half

HALF = (torch.bfloat16, torch.float16)
SHRINK = 0.9  # each step first tries 1/(0.9 L): the step grows back where the curvature has dropped
INNER = 0.8  # the working set is solved to INNER * tol, so that the check over all features passes at tol
NOISE = 1e-5  # relative differences of f below this are rounding (float32 logits): test the curvature by gradients
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


_ADDMM_OUT_DTYPE = [_HAS_MM_OUT_DTYPE]  # torch.addmm(..., out_dtype=) on CUDA; set False if it refuses a case


def _mm_acc(acc: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """acc + A @ B for half-precision A and B with float32 acc [m, n] (broadcast from [n] allowed): on CUDA one
    product whose epilogue adds acc (no separate pass over the [m, n] result), elsewhere `_mm` and an add."""
    if A.is_cuda and A.dtype in HALF and _ADDMM_OUT_DTYPE[0]:
        try:
            return torch.addmm(acc.expand(A.shape[0], B.shape[1]), A, B.to(A.dtype), out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch whose addmm(out_dtype=) lacks this case: products and adds
            _ADDMM_OUT_DTYPE[0] = False
    return acc + _mm(A, B)


def logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """[n, C] = X W^T + b, in W's dtype (float32 for half-precision X).  For half-precision X the product
    rounds W to X's dtype; ``exact`` adds the product with the rounding's remainder, which leaves W with 16
    significant bits (bfloat16): the objective needs this, or its value jitters by more than the stop test's
    tolerance as W's rounding changes from step to step."""
    if X.dtype not in HALF:
        return _mm(X, W.t()) + b
    if not exact:
        return _mm_acc(b, X, W.t())
    hi, lo = split_half(W, X.dtype)
    return _mm_acc(_mm_acc(b, X, hi.t()), X, lo.t())


def _gradient(Z: torch.Tensor, X: torch.Tensor, y: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [n], dW [C, F], db [C]) of the mean cross-entropy at logits Z [n, C].  For half-precision X, R (in
    float32) is split into a half-precision head and remainder, each multiplied into X with float32 accumulation:
    the gradient of 16 significant bits that the KKT test at small lambdas needs (one product of a rounded R
    stops near KKT/lambda ~ 1e-3 there)."""
    n = X.shape[0]
    if X.dtype not in HALF:
        loss, R = softmax_xent(Z, y, scale=1.0 / n, grad_dtype=X.dtype)  # [n], [n, C]
        return loss, _mm(R.t(), X).to(dtype), R.sum(0, dtype=dtype)
    # R unscaled (|R| <= 1: no float16 underflow), as head and remainder from the softmax pass itself: [n, C] each
    loss, (hi, lo) = softmax_xent(Z, y, grad_dtype=X.dtype, split=True)
    gW = _mm_acc(_mm(hi.t(), X), lo.t(), X) / n  # [C, F]
    gb = (hi.sum(0, dtype=torch.float32) + lo.sum(0, dtype=torch.float32)) / n
    return loss, gW.to(dtype), gb.to(dtype)


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


def kkt_violation(gW: torch.Tensor, gb: torch.Tensor, W: torch.Tensor, lam: float) -> float:
    """How far (W, b) is from optimal, relative to lam: the largest distance of a gradient entry to its
    subdifferential condition (w != 0: |g + lam sign(w)|; w == 0: max(|g| - lam, 0); intercepts: |g|), / lam."""
    v = torch.where(W != 0, (gW + lam * torch.sign(W)).abs(), (gW.abs() - lam).clamp(min=0))
    return max(float(v.max()) if v.numel() else 0.0, float(gb.abs().max())) / lam


@dataclass
class FistaResult:
    W: torch.Tensor
    b: torch.Tensor
    objective: float
    iterations: int
    converged: bool
    kkt: float = float("nan")  # kkt_violation at the end
    L: float = float("nan")  # the last accepted curvature estimate (the next lambda starts from it)


def _soft(W: torch.Tensor, thresh: float) -> torch.Tensor:
    return torch.sign(W) * torch.clamp(W.abs() - thresh, min=0)  # prox of thresh * ||.||_1


def _loss(Z: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of logits Z [n, C] (float64 sum)."""
    loss, _ = softmax_xent(Z, y, grad=False)
    return float(loss.sum(dtype=torch.float64)) / len(y)


def fista(X: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, W0: torch.Tensor | None = None,
          b0: torch.Tensor | None = None, L: float | None = None, tol: float = 1e-3,
          max_iter: int = 5000, check_every: int = 10, backtrack: bool = True) -> FistaResult:
    """Minimize f(W, b) for one lam.  X: [n, F] float64, float32, bfloat16 or float16 (W, b: float32 for the
    last two, see `param_dtype`); y: [n] int64.  ``L``: the curvature estimate to start from (default: a quarter
    of the global bound `lipschitz`); ``tol``: the KKT tolerance, relative to lam (module docstring), checked
    every ``check_every`` steps (the check costs one more product R^T X).  ``backtrack=False``: the fixed step
    1/L of the global bound (``L`` or `lipschitz`), as round 1 solved: kept to show what backtracking buys."""
    n, nf = X.shape
    z = dict(dtype=param_dtype(X), device=X.device)
    W = W0.to(**z, copy=True) if W0 is not None else torch.zeros(n_classes, nf, **z)
    b = b0.to(**z, copy=True) if b0 is not None else torch.zeros(n_classes, **z)
    Lk = (L or lipschitz(X)) if not backtrack else L / 2 if L else lipschitz(X) / 4
    Zx = logits(X, W, b, exact=True)  # [n, C] logits of the iterate (W, b)
    fx = _loss(Zx, y)
    W_prev, b_prev, Z_prev, t = W, b, Zx, 1.0
    kkt = float("inf")
    for it in range(1, max_iter + 1):
        L_try = Lk * SHRINK if backtrack else Lk  # let the step grow again where the curvature has dropped
        while True:  # backtracking (Scheinberg, Goldfarb & Bai 2014: the momentum follows the step's changes)
            t_next = (1 + math.sqrt(1 + 4 * (L_try / Lk) * t * t)) / 2
            mom = (t - 1) / t_next
            if mom > 0:  # the extrapolated point and its logits (X W^T is linear in W): x + mom (x - x_prev)
                zW, zb, Zz = (torch.lerp(p, x, 1 + mom) for p, x in ((W_prev, W), (b_prev, b), (Z_prev, Zx)))
            else:
                zW, zb, Zz = W, b, Zx
            loss, gW, gb = _gradient(Zz, X, y, W.dtype)
            fz = float(loss.sum(dtype=torch.float64)) / n
            Wn, bn = _soft(zW - gW / L_try, lam / L_try), zb - gb / L_try
            Zn = logits(X, Wn, bn, exact=True)
            fn = _loss(Zn, y)
            if not backtrack:  # the global bound holds everywhere: no test
                break
            dW, db = Wn - zW, bn - zb
            dd = float((dW * dW).sum() + (db * db).sum())
            if abs(fn - fz) > NOISE * abs(fz):  # the values differ clearly: the sufficient-decrease test
                ok = fn - fz - float((gW * dW).sum() + (gb * db).sum()) <= L_try / 2 * dd
            else:  # below the rounding of f's sums: the same curvature bound from gradients (TFOCS does so)
                _, gn, gbn = _gradient(Zn, X, y, W.dtype)
                ok = float(((gn - gW) * dW).sum() + ((gbn - gb) * db).sum()) <= L_try * dd
            if ok:
                break
            L_try *= 2
        Lk = L_try
        W_prev, b_prev, Z_prev = W, b, Zx
        W, b, Zx, fx = Wn, bn, Zn, fn
        # restart the momentum where it points against the step just taken (the gradient scheme: a test on f's
        # values restarts spuriously where they differ by less than their rounding, and FISTA then crawls like ISTA)
        back = float(((zW - Wn) * (Wn - W_prev)).sum() + ((zb - bn) * (bn - b_prev)).sum())
        t = 1.0 if back > 0 else t_next
        if it % check_every == 0 or it == max_iter:
            _, gx, gbx = _gradient(Zx, X, y, W.dtype)
            kkt = kkt_violation(gx, gbx, W, lam)
            if kkt <= tol:
                return FistaResult(W, b, fx + lam * float(W.abs().sum()), it, True, kkt, Lk)
    return FistaResult(W, b, fx + lam * float(W.abs().sum()), max_iter, False, kkt, Lk)


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
    kkt: list[float] = field(default_factory=list)  # kkt_violation over all features at the end
    converged: list[bool] = field(default_factory=list)  # kkt <= tol (False: max_iter reached first)
    seconds: list[float] = field(default_factory=list)
    features: list[int] = field(default_factory=list)  # the working set's size at the end
    tol: float = 0.0
    best: int = 0  # index of the lambda with the best validation accuracy

    @property
    def unconverged(self) -> list[int]:
        """Indices of the lambdas whose solve stopped at max_iter before the KKT test held."""
        return [k for k, c in enumerate(self.converged) if not c]


def lambda_max(X: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """The smallest lam for which W = 0 (intercepts only) is optimal: max |grad_W f(0, b*)|."""
    return float(_at_zero(X, y, n_classes)[1].abs().max())


def _at_zero(X: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal intercepts b* [C] when W = 0, and the gradient [C, F] of f there."""
    counts = torch.bincount(y, minlength=n_classes).to(param_dtype(X))
    b = torch.log((counts / counts.sum()).clamp(min=1e-12))
    # `_gradient`, not R / n cast to X's dtype: for float16 X and a million rows, R / n underflows
    _, gW, _ = _gradient(logits(X, torch.zeros(n_classes, X.shape[1], dtype=b.dtype, device=X.device), b), X, y,
                         b.dtype)
    return b, gW


def _accuracy(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> float:
    return float((logits(X, W, b).argmax(1) == y).to(torch.float64).mean()) if len(y) else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l1_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, X_val: torch.Tensor | None = None,
            y_val: torch.Tensor | None = None, n_lambdas: int = 20, min_ratio: float = 1e-3, tol: float = 1e-3,
            max_iter: int = 2000, patience: int = 4, progress: Callable[[int, int], None] | None = None,
            screen: bool = True, on_lambda: Callable[[ProbePath], None] | None = None) -> ProbePath:
    """Fit along a geometric lambda path from lam_max down to lam_max * min_ratio, warm-started, on working sets
    of features (``screen``; module docstring).  ``max_iter``: steps per lambda, all rounds together.
    ``progress``: called with (lambdas done, n_lambdas) after each lambda (and (n, n) when validation stops the
    path early); ``on_lambda``: with the path so far, after each lambda."""
    n, nf = X.shape
    b, g = _at_zero(X, y, n_classes)  # g: [C, F], the gradient at the current solution
    lam0 = float(g.abs().max())
    lams = [lam0 * min_ratio ** (k / max(1, n_lambdas - 1)) for k in range(n_lambdas)]
    W = torch.zeros(n_classes, nf, dtype=b.dtype, device=X.device)
    path = ProbePath(tol=tol)
    Lk, since_best, lam_prev = None, 0, lam0
    for lam in lams:
        _sync(X.device)
        t0 = time.perf_counter()
        if screen:  # the strong rule, and every feature already in use
            active = (W != 0).any(0) | (g.abs().amax(0) >= 2 * lam - lam_prev)
        else:
            active = torch.ones(nf, dtype=torch.bool, device=X.device)
        steps = 0
        while True:
            cols = active.nonzero()[:, 0]
            part = X if len(cols) == nf else X.index_select(1, cols)  # [n, |S|]
            # a margin under tol: the check over all features multiplies other column blocks, whose products
            # differ from the working set's in their last bits (seen: 0.99e-3 there, 1.06e-3 here, bf16 on an H100)
            r = fista(part, y, n_classes, lam, W[:, cols], b, L=Lk, tol=INNER * tol, max_iter=max(1, max_iter - steps))
            steps, Lk = steps + r.iterations, r.L
            W = torch.zeros_like(W)
            W[:, cols] = r.W
            b = r.b
            del part
            _, g, gb = _gradient(logits(X, W, b, exact=True), X, y, W.dtype)  # [C, F]: the KKT check, all features
            kkt = kkt_violation(g, gb, W, lam)
            new = ~active & ((g.abs() - lam).amax(0) > tol * lam)
            if steps >= max_iter or not new.any() and kkt <= tol:
                break
            active |= new
        _sync(X.device)
        path.lambdas.append(lam)
        path.W.append(W.detach().cpu())
        path.b.append(b.detach().cpu())
        path.nnz.append(int((W != 0).sum()))
        path.train_acc.append(_accuracy(X, y, W, b))
        path.val_acc.append(_accuracy(X_val, y_val, W, b) if X_val is not None else path.train_acc[-1])
        path.objective.append(r.objective)
        path.iterations.append(steps)
        path.kkt.append(kkt)
        path.converged.append(kkt <= tol)
        path.features.append(int(active.sum()))
        path.seconds.append(time.perf_counter() - t0)
        lam_prev = lam
        if progress:
            progress(len(path.lambdas), n_lambdas)
        if on_lambda:
            on_lambda(path)
        if path.val_acc[-1] > path.val_acc[path.best] + 1e-12:
            path.best, since_best = len(path.lambdas) - 1, 0
        else:
            since_best += 1
            if X_val is not None and patience and since_best >= patience:
                break
    if progress and len(path.lambdas) < n_lambdas:
        progress(n_lambdas, n_lambdas)  # stopped early: the rest of the path is not needed
    return path
