"""The mining kernels alone, at the shapes of RN50's and ViT-B/32's blocks, under a few tilings each: GPU time per
batch summed over a model's blocks, the reduce pass's bandwidth, and the torch references for comparison.

    python bench/mining_kernels.py [--batch 256] [--reps 10] [--compile] [--quick]

Activations: random bfloat16 in the model's layout (channels_last for the ResNet, the token layers' strided view
for the ViT), a fresh tensor per block.  Each block's top-k is first filled by 8 batches through the kernels,
so the thresholds are those of a run after 2,048 images (the share of candidate pairs is printed).  Times: each call
captured in a CUDA graph and replayed --reps times (GPU time, without Python's launch overhead).  --quick: tiny shapes on the CPU through the references (checks that the
script runs).  --compile: also the torch references through `torch.compile` (the issue's second baseline).
Last, RN50's block tails (bn3 + shortcut + ReLU) with and without the reduction: torch ops against the fused
kernel (atlas.kernels.tail); --only mining|tail runs one part.
"""

from __future__ import annotations

import argparse
import math

import torch

from atlas.kernels.mining import spatial_reduce_torch, spatial_reduce_triton
from atlas.kernels.stats import score_stats_torch, score_stats_triton
from atlas.kernels.topk import gather_maps_torch, gather_maps_triton, merge_topk_torch, merge_topk_triton

RN50 = [(256, 56)] * 3 + [(512, 28)] * 4 + [(1024, 14)] * 6 + [(2048, 7)] * 3  # (units, grid) per block
VIT = [(768, 7)] * 12
REDUCE = {"tile1024/64/2w (default)": dict(), "tile1024/32/2w": dict(long=32), "tile4096/64/8w (first)": dict(tile=4096, long=64, warps=8),
          "tile2048/32/4w": dict(tile=2048, long=32, warps=4), "tile512/32/1w": dict(tile=512, long=32, warps=1),
          "tile1024/32/1w": dict(long=32, warps=1), "tile2048/64/2w": dict(tile=2048, long=64),
          "tile1024/64/2w unroll2": dict(unroll=2), "tile512/16/1w": dict(tile=512, long=16, warps=1)}
STATS = {"u2/b256/2w (default)": dict(), "u32/b64/4w (first)": dict(block_u=32, block_b=64, warps=4),
         "u8/b256/4w": dict(block_u=8, block_b=256, warps=4), "u4/b256/4w": dict(block_u=4, block_b=256, warps=4), "u16/b128/4w": dict(block_u=16, block_b=128),
         "u8/b256/8w": dict(block_u=8, block_b=256, warps=8)}
TAIL = {"default tiling": dict(),  # 1024/128/2w with the reduction, 2048/128/4w without
        "tile1024/64/2w": dict(tile=1024, long=64, warps=2), "tile2048/64/4w": dict(tile=2048, long=64, warps=4),
        "tile4096/128/8w": dict(tile=4096, long=128, warps=8), "tile2048/128/4w": dict(tile=2048, long=128, warps=4),
        "tile1024/128/2w": dict(tile=1024, long=128, warps=2), "tile512/64/1w": dict(tile=512, long=64, warps=1),
        "tile2048/256/4w": dict(tile=2048, long=256, warps=4), "tile2048/128/2w": dict(tile=2048, long=128, warps=2),
        "tile1024/128/1w": dict(tile=1024, long=128, warps=1), "tile512/128/1w": dict(tile=512, long=128, warps=1),
        "tile4096/256/4w": dict(tile=4096, long=256, warps=4)}
MERGE = {"u1/b32/1w (default)": dict(), "u4/b32/4w (first)": dict(block_u=4, block_b=32, warps=4),
         "u1/b64/2w": dict(block_u=1, block_b=64, warps=2), "u1/b16/1w": dict(block_u=1, block_b=16, warps=1)}


def activations(batch: int, units: int, grid: int, vit: bool, gen: torch.Generator, device) -> torch.Tensor:
    """[B, U, g, g] bf16 in the layout the model produces."""
    if vit:  # [B, 1 + g*g, U] tokens -> the canonical strided view without the CLS token
        t = torch.randn(batch, 1 + grid * grid, units, generator=gen, device=device).bfloat16()
        return t[:, 1:, :].transpose(1, 2).reshape(batch, units, grid, grid)
    x = torch.randn(batch, units, grid, grid, generator=gen, device=device).clamp_min(0).bfloat16()
    return x.to(memory_format=torch.channels_last)


class State:
    def __init__(self, units: int, k: int, device):
        self.values = torch.full((units, k), -math.inf, device=device)
        self.index = torch.full((units, k), -1, dtype=torch.int64, device=device)
        self.argmax = torch.zeros((units, k), dtype=torch.int32, device=device)
        self.maps = torch.zeros((units, k, 64), device=device)


def tilings(table: dict, args) -> list:
    """The tilings to time: all of ``table``, or with --default-tilings only its first (the default)."""
    return list(table.items())[:1] if args.default_tilings else list(table.items())


def timed(fn, reps: int, device) -> float:
    """GPU seconds per call: the call captured once in a CUDA graph, replayed ``reps`` times (so Python's launch
    overhead, which the real loop hides behind the forward pass, is not counted)."""
    fn()
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def tail_rows(blocks, args, device) -> None:
    """RN50's block tails (bn3, + identity, ReLU), alone and with mining's reduction: the torch ops (eager and
    compiled) against the fused kernel (atlas.kernels.tail)."""
    from atlas.kernels.tail import bn_params, bottleneck_tail_torch, bottleneck_tail_triton

    gen = torch.Generator(device=device).manual_seed(1)
    cases = []
    for units, grid in blocks:
        y = activations(args.batch, units, grid, False, gen, device) - 0.5
        identity = activations(args.batch, units, grid, False, gen, device)
        bn = torch.nn.BatchNorm2d(units).to(device).eval()
        bn.running_var.uniform_(0.5, 2.0)
        thr = (torch.arange(args.batch, device=device), torch.full((units,), 2.0, device=device),
               torch.full((units,), 10**6, dtype=torch.int64, device=device), "max")
        cases.append((y, identity, bn, bn_params(bn), thr))
    nbytes = sum(3 * y.numel() * y.element_size() for y, *_ in cases)
    print(f"\nRN50 block tails: {len(cases)} blocks, {nbytes / 1e9:.2f} GB read and written by one fused pass")
    rows = {"tail, torch (bn3, add, relu: 3 passes)": lambda y, i, bn, p, t: bottleneck_tail_torch(y, i, bn),
            "tail + reduce, torch + the reduce kernel": lambda y, i, bn, p, t: spatial_reduce_triton(
                bottleneck_tail_torch(y, i, bn)[0], *t[:3]) if device.type == "cuda" else None}
    if args.compile:
        compiled = torch.compile(bottleneck_tail_torch, dynamic=False)
        rows["tail, torch.compile"] = lambda y, i, bn, p, t: compiled(y, i, bn)
        rows["tail + reduce, torch.compile"] = lambda y, i, bn, p, t: compiled(y, i, bn, t)
    if device.type == "cuda":
        for label, cfg in tilings(TAIL, args):
            rows[f"tail, triton {label}"] = lambda y, i, bn, p, t, c=cfg: bottleneck_tail_triton(y, i, bn, params=p,
                                                                                               **c)
            rows[f"tail + reduce, triton {label}"] = lambda y, i, bn, p, t, c=cfg: bottleneck_tail_triton(
                y, i, bn, t, params=p, **c)
    shapes = sorted({(u, g) for u, g in blocks}, key=lambda s: -s[1])
    if args.per_shape:
        print(f"  {'':42s} {'all':>8s}    " + " ".join(f"{f'{u}@{g}x{g}':>11s}" for u, g in shapes) + "   (ms)")
    for label, fn in rows.items():
        per = [timed(lambda c=c, fn=fn: fn(*c), args.reps, device) for c in cases]
        sec = sum(per)
        line = f"  {label:42s} {sec * 1e3:8.3f} ms/batch {nbytes / sec / 1e12:6.2f} TB/s"
        if args.per_shape:  # the blocks of each shape together
            line = f"  {label:42s} {sec * 1e3:8.3f}    " + " ".join(
                f"{sum(t for t, b in zip(per, blocks) if b == sh) * 1e3:11.3f}" for sh in shapes)
        print(line)


def model_rows(name: str, blocks, args, device) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    k, b = args.top_k, args.batch
    cuda = device.type == "cuda"
    layers = []
    for units, grid in blocks:
        st = State(units, k, device)
        for i in range(8):  # fill the top-k: thresholds of a run after 8 batches
            a = activations(b, units, grid, name == "ViT-B-32", gen, device)
            idx = torch.arange(i * b, (i + 1) * b, device=device)
            red = spatial_reduce_torch(a, idx, st.values[:, -1], st.index[:, -1])
            m = (merge_topk_triton if cuda else merge_topk_torch)(red.peak, idx, red.arg, st.values, st.index,
                                                                   st.argmax)
            st.values, st.index, st.argmax = m.values, m.index, m.argmax
        a = activations(b, units, grid, name == "ViT-B-32", gen, device)
        idx = torch.arange(8 * b, 9 * b, device=device)
        layers.append((a, idx, st, min(grid, 8)))
    nbytes = sum(a.numel() * a.element_size() for a, *_ in layers)
    flags = [spatial_reduce_torch(a, idx, st.values[:, -1], st.index[:, -1]).flag.float().mean()
             for a, idx, st, _ in layers]
    print(f"\n{name}: {len(layers)} blocks, batch {b}, {nbytes / 1e9:.2f} GB of activations per batch, "
          f"candidate pairs {float(torch.stack(flags).mean()):.2%}")

    def total(fn) -> float:
        return sum(timed(lambda L=L: fn(*L), args.reps, device) for L in layers)

    def report(label: str, sec: float, extra: str = "") -> None:
        print(f"  {label:34s} {sec * 1e3:8.3f} ms/batch {extra}")

    compiled = {name: torch.compile(fn, dynamic=False) for name, fn in
                (("reduce", spatial_reduce_torch), ("stats", score_stats_torch), ("merge", merge_topk_torch),
                 ("maps", gather_maps_torch))} \
        if args.compile else {}
    report("reduce, torch", total(lambda a, i, st, mhw: spatial_reduce_torch(a, i, st.values[:, -1], st.index[:, -1])))
    if "reduce" in compiled:
        report("reduce, torch.compile", total(lambda a, i, st, mhw: compiled["reduce"](a, i, st.values[:, -1],
                                                                                       st.index[:, -1])))
    if cuda:
        for label, cfg in tilings(REDUCE, args):
            sec = total(lambda a, i, st, mhw, c=cfg: spatial_reduce_triton(a, i, st.values[:, -1], st.index[:, -1],
                                                                           **c))
            report(f"reduce, triton {label}", sec, f"{nbytes / sec / 1e12:6.2f} TB/s")
    scores = [(spatial_reduce_torch(a, i, st.values[:, -1], st.index[:, -1]), i, st, a, mhw) for a, i, st, mhw in layers]

    def stats_args(st):
        u = st.values.shape[0]
        z = dict(device=device)
        return (torch.zeros(u, dtype=torch.int64, **z), torch.zeros(u, dtype=torch.float64, **z),
                torch.zeros(u, dtype=torch.float64, **z), torch.zeros(u, dtype=torch.int64, **z),
                torch.zeros(u, dtype=torch.int64, **z), torch.full((u,), math.inf, **z),
                torch.full((u,), -math.inf, **z), torch.zeros(u, 64, dtype=torch.int64, **z),
                torch.full((u,), -20, **z))

    states = [stats_args(st) for _, _, st, _, _ in scores]
    sum_t = lambda fn: sum(timed(lambda j=j: fn(j), args.reps, device) for j in range(len(scores)))
    report("stats, torch", sum_t(lambda j: score_stats_torch(scores[j][0].peak, *states[j], -20)))
    if "stats" in compiled:
        report("stats, torch.compile", sum_t(lambda j: compiled["stats"](scores[j][0].peak, *states[j], -20)))
    if cuda:
        for label, cfg in tilings(STATS, args):
            report(f"stats, triton {label}", sum_t(lambda j, c=cfg: score_stats_triton(scores[j][0].peak, *states[j],
                                                                                         -20, **c)))
    merge_args = lambda j: (scores[j][0].peak, scores[j][1], scores[j][0].arg, scores[j][2].values,
                            scores[j][2].index, scores[j][2].argmax)
    merged = [(merge_topk_triton if cuda else merge_topk_torch)(*merge_args(j)) for j in range(len(scores))]
    gm = lambda fn: sum_t(lambda j: fn(scores[j][3], merged[j].source, scores[j][2].maps[..., : scores[j][4] ** 2],
                                       (scores[j][4], scores[j][4])))
    # the maps before the merge: torch.compile of the merge's stable two-key sort did not finish in 4 minutes
    report("maps, torch (all U*K pooled)", gm(gather_maps_torch))
    if "maps" in compiled:
        report("maps, torch.compile", gm(compiled["maps"]))
    if cuda:
        report("maps, triton (new entries only)", gm(gather_maps_triton))
    report("merge, torch (sort of k+B)", sum_t(lambda j: merge_topk_torch(*merge_args(j))))
    if cuda:
        for label, cfg in tilings(MERGE, args):
            report(f"merge, triton {label}", sum_t(lambda j, c=cfg: merge_topk_triton(*merge_args(j), **c)))
    if "merge" in compiled:
        report("merge, torch.compile", sum_t(lambda j: compiled["merge"](*merge_args(j))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also time the torch references under torch.compile")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--default-tilings", action="store_true", help="time each kernel at its default tiling only")
    ap.add_argument("--only", choices=["mining", "tail"], help="one part: the four mining kernels, or RN50's tails")
    ap.add_argument("--per-shape", action="store_true", help="tails: also the time of the blocks of each shape")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    rn50, vit = RN50, VIT
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)  # one graph per shape
    if args.quick:
        args.batch, args.reps = 4, 1
        rn50, vit = [(8, 6), (16, 3)], [(12, 2)]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    if args.only != "tail":
        model_rows("RN50", rn50, args, device)
        model_rows("ViT-B-32", vit, args, device)
    if args.only != "mining":
        tail_rows(rn50, args, device)


if __name__ == "__main__":
    main()
