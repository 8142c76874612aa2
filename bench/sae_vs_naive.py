"""A TopK SAE training loop written the way a user would (dense code, dense decode, autograd, Adam) against atlas's
trainer (`atlas.sae.train.fit`: sparse-gradient encoder, gathered decode, fused Adam, bfloat16 autocast on CUDA), same
width, k, batch and steps on the same random activations; prints activations/s of both.

    python bench/sae_vs_naive.py --device cpu --n 20000 --d 1024 --width 4096 --k 32 --batch 1024 --steps 20
    python bench/sae_vs_naive.py --device cuda --n 1000000 --d 1024 --width 32768 --k 32 --batch 4096 --steps 200

Both loops keep the decoder rows at unit norm; neither counts data loading (the activations are on the device).
The auxiliary loss against dead latents is off in both for the comparison (``aux_k=0``), and atlas is timed a second
time with it on (dead latents after ``--dead-after`` inputs)."""

from __future__ import annotations

import argparse
import time

import torch

from atlas.config import SaeConfig
from atlas.sae.train import fit


def naive(x: torch.Tensor, width: int, k: int, batch: int, steps: int, lr: float) -> float:
    """The plain loop; returns seconds."""
    d = x.shape[1]
    enc = torch.nn.Linear(d, width).to(x.device)
    w_dec = torch.nn.Parameter(enc.weight.detach().clone())  # [F, d]
    with torch.no_grad():
        w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_pre = torch.nn.Parameter(x.mean(0).clone())
    opt = torch.optim.Adam([*enc.parameters(), w_dec, b_pre], lr=lr)
    g = torch.Generator(device="cpu").manual_seed(0)
    sync(x.device)
    t0 = time.perf_counter()
    for step in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g).to(x.device)]
        pre = enc(xb - b_pre)  # [n, F]
        vals, idx = pre.topk(k, dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))  # dense code
        rec = z @ w_dec + b_pre
        loss = (rec - xb).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
    sync(x.device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=20000, help="activation rows")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dead-after", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the test of bench/)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.d, a.width, a.k, a.batch, a.steps = 2000, 64, 512, 8, 256, 5
    dev = torch.device(a.device)
    x = torch.randn(a.n, a.d, generator=torch.Generator().manual_seed(0)).to(dev)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}: n {a.n}, d {a.d}, width "
          f"{a.width}, k {a.k}, batch {a.batch}, steps {a.steps}")
    naive(x, a.width, a.k, a.batch, 2, 1e-4)  # warm-up
    fit(x, a.width, SaeConfig(layer="bench", width=str(a.width), k=a.k, steps=2, batch=a.batch, aux_k=0), dev)
    t_naive = naive(x, a.width, a.k, a.batch, a.steps, 1e-4)
    cfg = SaeConfig(layer="bench", width=str(a.width), k=a.k, steps=a.steps, batch=a.batch, lr=1e-4, aux_k=0,
                    dead_after=a.dead_after)
    t_atlas = fit(x, a.width, cfg, dev).seconds
    t_aux = fit(x, a.width, SaeConfig(**{**cfg.__dict__, "aux_k": 256}), dev).seconds
    rate = lambda t: a.steps * a.batch / t  # noqa: E731
    print(f"naive loop:           {rate(t_naive):12,.0f} activations/s ({t_naive / a.steps * 1e3:.1f} ms/step)")
    print(f"atlas (no aux loss):  {rate(t_atlas):12,.0f} activations/s ({t_atlas / a.steps * 1e3:.1f} ms/step)")
    print(f"atlas (aux loss on):  {rate(t_aux):12,.0f} activations/s ({t_aux / a.steps * 1e3:.1f} ms/step)")
    print(f"speed-up (no aux): {t_naive / t_atlas:.2f}x")


if __name__ == "__main__":
    main()
