"""Training a TopK sparse autoencoder on one layer's activations (Gao et al. 2024): `train_sae` (from a store: the
model and images it was mined from, weights written beside it) over `fit` (a tensor of activations in, the SAE out).

The step (`_Step`): the dense pre-activations are computed without autograd (bfloat16 autocast on CUDA), TopK picks
k per input, and only those k are recomputed with gradients: the encoder's gradient is a sparse [F, n] x [n, d]
product (`_Gathered`), the decoder gathers k rows per input (`atlas.kernels.sae.decode`).  A dense implementation
spends three more [n, F] x [F, d] products per step (`bench/sae_vs_naive.py` times both).  Decoder rows are kept at
unit norm: the gradient's component along each row is removed before the Adam step and the rows renormalized after.
The auxiliary loss reconstructs the residual from the ``aux_k`` largest pre-activations of dead latents (no fire in
the last ``dead_after`` inputs).  With ``matryoshka`` n > 1 the reconstruction loss is the mean over nested
prefixes of the features (the first F / 2^(n-1), ..., F), each decoded alone (docs/sae.md).  Inputs are scaled by
one number (their RMS distance to the mean per unit) while training; the scale is folded into the saved b_pre and
b_enc, so the SAE takes the layer's own units.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SaeConfig
from ..errors import AtlasError
from ..kernels.sae import SaeTensors, decode, encode


class SaeError(AtlasError, ValueError):
    """Activations an SAE cannot be trained on (non-finite values, too few of them) or a layer that has none."""


@dataclass
class FitResult:
    sae: SaeTensors  # on the CPU, float32, in the layer's units
    losses: list[float] = field(default_factory=list)  # every 50 steps: the loss (Matryoshka: mean over prefixes)
    dead_training: float = 0.0  # share of latents dead at the end of training (no fire in the last dead_after inputs)
    seconds: float = 0.0
    inputs_per_s: float = 0.0
    streamed: int = 0  # rows read from the stream (all of them, or as many as the steps drew)
    refills: int = 0  # times the buffer's drawn rows were replaced by the stream's next ones
    fill_seconds: float = 0.0  # the buffer's first fill (reading the stream's first buffer_rows rows)


class _Gathered(torch.autograd.Function):
    """values [n, k] = pre-activations (w_enc @ xc + b_enc) at indices [n, k], computed beforehand without autograd;
    the backward gives xc, w_enc and b_enc their gradients from those n * k entries only."""

    @staticmethod
    def forward(ctx, values, xc, w_enc, b_enc, indices):  # noqa: D102
        ctx.save_for_backward(xc, w_enc, indices)
        return values.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        xc, w_enc, idx = ctx.saved_tensors
        n, k = idx.shape
        flat, gf = idx.reshape(-1), g.reshape(-1).to(xc.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            gx = torch.nn.functional.embedding_bag(idx, w_enc, per_sample_weights=g.to(w_enc.dtype), mode="sum")
        if ctx.needs_input_grad[2]:
            rows = torch.arange(n, device=idx.device).repeat_interleave(k)
            sparse = torch.sparse_coo_tensor(torch.stack([flat, rows]), gf, (w_enc.shape[0], n), check_invariants=False)
            gw = torch.sparse.mm(sparse, xc)  # [F, d]
        if ctx.needs_input_grad[3]:
            gb = torch.zeros(w_enc.shape[0], dtype=gf.dtype, device=gf.device).index_add_(0, flat, gf)
        return None, gx, gw, gb, None


def init_params(x: torch.Tensor, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Decoder rows random unit vectors, encoder their transpose, b_enc 0, b_pre the data's mean."""
    d = x.shape[1]
    w_dec = torch.randn(width, d, generator=generator).to(x.device)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    return {"w_enc": w_dec.clone(), "b_enc": torch.zeros(width, device=x.device), "w_dec": w_dec,
            "b_pre": x.mean(0)}


def dead_update(since: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inputs since each latent last fired, after a batch: every count + n, then 0 where the latent fired (value >
    0) on some input of the batch.  since [F] int64 (changed in place and returned)."""
    since += values.shape[0]
    since[indices[values > 0]] = 0
    return since


def fired(values: torch.Tensor, indices: torch.Tensor, width: int) -> torch.Tensor:
    """[F] int64: inputs on which each latent fired (value > 0)."""
    return torch.bincount(indices[values > 0], minlength=width)


def fit(x: torch.Tensor, width: int, config: SaeConfig, device: torch.device | str = "cpu",
        log=None) -> FitResult:
    """Train a TopK SAE of ``width`` features on x [n, d] (float32, any device) as ``config`` says: `fit_stream`
    with every row in the buffer (epochs over x in a random order)."""
    return fit_stream(iter([x]), width, config, device, log, capacity=max(int(x.shape[0]), 1))


def fit_stream(blocks, width: int, config: SaeConfig, device: torch.device | str = "cpu", log=None,
               capacity: int | None = None) -> FitResult:
    """Train a TopK SAE of ``width`` features on a stream of row blocks [m, d] (`atlas.sae.stream`) through a
    shuffle buffer of ``capacity`` rows (default ``config.buffer_rows``) on ``device``.  The mean and scale the
    inputs are normalized by come from the buffer's first fill (all of the rows when they fit)."""
    from .stream import ShuffleBuffer

    device = torch.device(device)
    g = torch.Generator().manual_seed(config.seed)
    t_fill = time.perf_counter()
    buf = ShuffleBuffer(blocks, capacity or config.buffer_rows, device, g, config.layer)
    if buf.n < 2:
        raise SaeError(f"only {buf.n} activation rows of layer {config.layer}; use more images")
    x = buf.rows
    mean = x.mean(0)
    ss = sum(float((x[i:i + 65_536] - mean).pow(2).sum(dtype=torch.float64)) for i in range(0, buf.n, 65_536))
    scale = math.sqrt(ss / buf.n / x.shape[1]) or 1.0  # (in blocks: no second copy of a 10 GB buffer)
    p = {k: v.requires_grad_() for k, v in init_params((mean / scale)[None], width, g).items()}
    opt = adam(list(p.values()), config.lr)
    since = torch.zeros(width, dtype=torch.int64, device=device)
    var = ss / buf.n / scale ** 2
    losses: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    for step in range(config.steps):
        xb = buf.take(config.batch) / scale
        loss = _step(xb, p, since, config, var, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _project_decoder_grad(p["w_dec"])
        opt.step()
        with torch.no_grad():
            p["w_dec"] /= p["w_dec"].norm(dim=1, keepdim=True)
        if step % 50 == 0 or step == config.steps - 1:
            losses.append(float(loss.detach()))
            if log and step % 500 == 0:
                log(f"sae step {step}: loss {losses[-1]:.4f}, dead {float((since >= config.dead_after).float().mean()):.3f}")
    _sync(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        sae = SaeTensors(p["w_enc"].detach().cpu(), p["b_enc"].detach().cpu() * scale, p["w_dec"].detach().cpu(),
                         p["b_pre"].detach().cpu() * scale, config.k)
    return FitResult(sae, losses, float((since >= config.dead_after).float().mean()), seconds,
                     config.steps * config.batch / max(seconds, 1e-9), buf.streamed, buf.refills, t0 - t_fill)


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per parameter where this torch has it for the device (CUDA; CPU from torch 2.4:
    7x faster than the default on a [4096, 1024] matrix on 2 cores); the same update either way."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused Adam for this device in this torch
        return torch.optim.Adam(params, lr=lr)


def _step(xb: torch.Tensor, p: dict[str, torch.Tensor], since: torch.Tensor, config: SaeConfig, var: float,
          bf16: bool) -> torch.Tensor:
    """The loss of one batch [n, d] (normalized MSE + aux_coef x the auxiliary loss); updates ``since``."""
    xc = xb - p["b_pre"]
    with torch.no_grad(), torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
        pre = torch.addmm(p["b_enc"], xc, p["w_enc"].t()).float()  # [n, F]
    vals, idx = pre.topk(config.k, dim=1)
    z = _Gathered.apply(vals, xc, p["w_enc"], p["b_enc"], idx).clamp_min(0)  # [n, k]
    sae = SaeTensors(p["w_enc"], p["b_enc"], p["w_dec"], p["b_pre"], config.k)
    err = xb - decode(z, idx, sae)
    loss = err.pow(2).sum(1).mean() / var
    if config.matryoshka > 1:  # the mean over nested prefixes; the last one (all F features) is the loss above
        for m in prefixes(p["w_dec"].shape[0], config.matryoshka)[:-1]:
            loss = loss + (xb - decode(z * (idx < m), idx, sae)).pow(2).sum(1).mean() / var
        loss = loss / config.matryoshka
    with torch.no_grad():
        dead = dead_update(since, z.detach(), idx) >= config.dead_after
        n_dead = int(dead.sum())
    if n_dead and config.aux_k and config.aux_coef:
        with torch.no_grad():
            a_vals, a_idx = dead_topk(pre, dead, min(config.aux_k, n_dead))
        a = _Gathered.apply(a_vals, xc, p["w_enc"], p["b_enc"], a_idx).clamp_min(0)
        e_hat = torch.nn.functional.embedding_bag(a_idx, p["w_dec"], per_sample_weights=a, mode="sum")
        residual = err.detach()
        aux = (residual - e_hat).pow(2).sum(1).mean() / residual.pow(2).sum(1).mean().clamp_min(1e-12)
        loss = loss + config.aux_coef * torch.nan_to_num(aux, nan=0.0)
    return loss


def dead_topk(pre: torch.Tensor, dead: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, latent indices) [n, k] of the k largest pre-activations [n, F] among the ``dead`` latents [F]: over
    the dead columns alone where they are under half of F (a trained SAE has few: a top-k over [n, dead] instead of a
    masked copy of [n, F]), else over the masked matrix."""
    cols = dead.nonzero().squeeze(1)
    if 2 * len(cols) >= pre.shape[1]:
        return pre.masked_fill(~dead, -math.inf).topk(k, dim=1)
    vals, j = pre.index_select(1, cols).topk(k, dim=1)
    return vals, cols[j]


def prefixes(width: int, n: int) -> list[int]:
    """The nested prefix sizes of a Matryoshka SAE of ``width`` features: F / 2^(n-1), ..., F / 2, F."""
    return [width >> i for i in range(n - 1, -1, -1)]


def _project_decoder_grad(w_dec: torch.Tensor) -> None:
    """Remove from each decoder row's gradient its component along the row (the rows stay unit-norm)."""
    if w_dec.grad is not None:
        w_dec.grad -= (w_dec.grad * w_dec.detach()).sum(1, keepdim=True) * w_dec.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def metrics(x: torch.Tensor, sae: SaeTensors, batch: int = 8192) -> dict[str, float]:
    """Held-out figures of an SAE on x [n, d]: fraction of variance explained (1 - sum |x - x^|^2 / sum |x - mean|^2),
    L0 (mean features > 0 per input), dead fraction (features that fire on none of the inputs)."""
    x = x.float()
    sse, l0, fires = 0.0, 0.0, torch.zeros(sae.width, dtype=torch.int64, device=x.device)
    p = sae.to(x.device)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch]
            vals, idx = encode(xb, p)
            sse += float((xb - decode(vals, idx, p)).double().pow(2).sum())
            l0 += float((vals > 0).sum())
            fires += fired(vals, idx, sae.width)
        sst = float((x.double() - x.double().mean(0)).pow(2).sum())
    return {"fve": 1 - sse / sst if sst > 0 else float("nan"), "l0": l0 / max(x.shape[0], 1),
            "dead_fraction": float((fires == 0).float().mean()), "inputs": int(x.shape[0])}


def to_arrays(sae: SaeTensors) -> dict[str, np.ndarray]:
    return {"w_enc": sae.w_enc.numpy(), "b_enc": sae.b_enc.numpy(), "w_dec": sae.w_dec.numpy(),
            "b_pre": sae.b_pre.numpy()}


def from_arrays(arrays: dict[str, np.ndarray], k: int) -> SaeTensors:
    return SaeTensors(*(torch.from_numpy(np.asarray(arrays[t], np.float32)) for t in ("w_enc", "b_enc", "w_dec",
                                                                                         "b_pre")), int(k))
