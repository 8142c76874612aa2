"""What mining costs on top of the forward pass: images/s of the image tower alone vs with atlas.mining's LayerState
fed, through forward hooks, by every conv / tokens layer of the model's layer table.

    python bench/mining_overhead.py [--models RN50 ViT-B-32] [--batch 256] [--prefill 8] [--iters 10] [--pooled]
                                    [--profile] [--quick]

Random-weight open_clip models from atlas's registry (open_clip:ARCH@random:0), set up as atlas.mining sets them up
(`atlas.mining.loop._model_path`: bfloat16 autocast with conv/linear weights cast once, channels_last),
synthetic pixels already on the GPU (fresh noise every step from a seeded generator, so every path sees the
same images).  Paths:

- forward:     the image tower alone;
- plain:       LayerState.update_reference (torch reductions, maps of every image, a full sort of k+B per unit),
               what atlas.mining did before the kernels;
- fast-torch:  LayerState.update with the torch reductions (only candidate images pooled, candidate units merged);
- fast-triton: LayerState.update with the Triton kernels (CUDA only);
- graph:       fast-triton with the whole step (forward + updates) replayed from a CUDA graph (atlas.mining.cuda_graphs);
- graph-fused: graph with each ResNet block's tail and its reduction in one kernel (atlas.mining.fused_tails), as atlas.mining
               runs on CUDA (ViT: no fusable blocks, skipped);
- graph-serial, graph-fused-serial: the same with each layer's updates on the forward's own stream (GraphStep's
               overlap=False) instead of a side stream;
- forward-graph, forward-fused: the forward-only baselines of those two: the image tower alone replayed from a
               CUDA graph, without and with the fused tails (no reduction);
- compiled:    with --compile, fast-torch with the reductions through torch.compile.

Each path first mines --prefill batches (untimed), so the running top-k holds what a run holds after that many
images; the share of images that are candidates for some unit, and of (image, unit) pairs, is printed, since it
sets what pooling and merging cost.  At the end the states of the paths are compared (rank_by max: bit for bit).
Times use CUDA events after warm-up.  --pooled: also keep the [images, units] matrices of spatial means (as
mining does by default; written to RAM arrays here).  --profile: after the timings, profile three steps of
forward and of fast-triton (torch.profiler) and print the GPU time per kernel and the launches per step.  --quick: batch 2, one
step, on the CPU (checks that the script runs).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch

from atlas.capture import find_modules, hooked
from atlas.config import MineConfig
from atlas.mining.cuda_graphs import GraphStep
from atlas.mining.fused_tails import fusable
from atlas.mining.loop import LayerState, _model_path
from atlas.models import load_model


class Timer:
    """Seconds between start() and stop(): CUDA events on a GPU (stop() waits for the GPU), else the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self.begin.record()
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self.t0
        self.end.record()
        torch.cuda.synchronize()
        return self.begin.elapsed_time(self.end) / 1e3


FORWARDS = ("forward", "forward-graph", "forward-fused")
GRAPHED = ("graph", "graph-fused", "graph-serial", "graph-fused-serial", "forward-graph", "forward-fused")
FUSED = ("graph-fused", "graph-fused-serial", "forward-fused")


def run_path(model, layers, path: str, args, device,
             profiled: bool = False) -> tuple[float, dict[str, LayerState], float, float]:
    """Seconds per batch, the final states, and the mean shares of candidate images and pairs."""
    from atlas.mining.fused_tails import fused_tails

    cfg = MineConfig(top_k=args.top_k, batch_size=args.batch, keep_pooled=args.pooled, map_size=args.map_size)
    backend = {"fast-torch": "torch", "compiled": "torch"}.get(path, "triton")
    rows = (args.prefill + args.iters + 2 + (7 if profiled else 0)) * args.batch
    pooled = lambda n: np.zeros((rows, model.layers[n].units), np.float16) if args.pooled else None
    states = {n: LayerState(model.layers[n], cfg, device, pooled(n), backend=backend) for n in layers}
    seen = {"images": [], "pairs": [], "count": False}
    index = {"next": 0}

    current: dict[str, torch.Tensor] = {}

    def consume(name: str, out) -> None:
        st = states[name]
        idx = current["index"]
        if path == "plain":
            st.update_reference(idx, out)
        else:
            if seen["count"]:  # untimed steps only: this is a second pass over the activations
                from atlas.kernels.mining import spatial_reduce

                flag = spatial_reduce(st.info.canonical(out).detach(), idx, st.values[:, -1], st.index[:, -1],
                                      cfg.rank_by, backend).flag
                seen["images"].append(flag.any(1).float().mean())
                seen["pairs"].append(flag.float().mean())
            st.update(idx, out)

    gen = torch.Generator(device=device).manual_seed(0)
    # the tower as atlas.mining runs it: channels_last, bf16 autocast with the conv/linear weights cast once
    tower = _model_path(model, "bfloat16" if device.type == "cuda" else "float32", graphs=path in GRAPHED)
    x = torch.empty(args.batch, 3, model.image_size, model.image_size, device=device).to(
        memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    mining = path not in FORWARDS
    blocks = {n: m for n, m in find_modules(model.clip, layers).items() if fusable(m)} if path in FUSED else {}
    hooks = hooked(model.clip, [n for n in layers if n not in blocks], consume) if mining else nullcontext()
    fused = fused_tails(blocks, states if mining else None, current) if blocks else nullcontext()
    graph = GraphStep(model.encode_image, current, list(states.values()) if mining else [],
                      overlap=not path.endswith("-serial"), side_priority=args.side_priority) \
        if path in GRAPHED else None

    def step() -> None:
        x.normal_(generator=gen)
        idx = torch.arange(index["next"], index["next"] + args.batch, device=device)
        if graph is not None:
            graph(x, idx)
        else:
            current["index"] = idx
            model.encode_image(x)
        index["next"] += args.batch

    clock = Timer(device)
    with torch.no_grad(), tower, hooks, fused:
        for _ in range(args.prefill):
            step()
        clock.start()
        for _ in range(args.iters):
            step()
        dt = clock.stop() / args.iters
        seen["count"] = True
        step()  # untimed: the share of candidates, after prefill + iters batches
        seen["count"] = False
        if profiled:
            profile(step, device, path)
    for st in states.values():
        st.drain()
    if profiled:
        return float("nan"), states, float("nan"), float("nan")
    share = lambda v: float(torch.stack(v).mean()) if v else float("nan")
    return dt, states, share(seen["images"]), share(seen["pairs"])


def profile(step, device, path: str = "fast-triton") -> None:
    """GPU time per kernel over three steps, and the kernel launches per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0)]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    print(f"\nprofile of {path}, 3 steps: {total / 3e3:.2f} ms GPU time per step, {launches / 3:.0f} kernels "
          "per step; top 30 by GPU time:")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:30]:
        print(f"  {e.self_device_time_total / 3e3:8.3f} ms/step {e.count / 3:6.0f}x  {e.key[:90]}")
    import cProfile
    import io
    import pstats

    host = cProfile.Profile()
    t0 = time.perf_counter()
    host.enable()
    for _ in range(3):
        step()
    host.disable()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    print(f"host time of 3 steps: {(t1 - t0) / 3 * 1e3:.2f} ms per step before the final wait; top 16 by own time:")
    out = io.StringIO()
    pstats.Stats(host, stream=out).sort_stats("tottime").print_stats(16)
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


ROUNDED = ("mean", "m2", "maps")  # float sums the kernels add in another order


def same_states(a: dict[str, LayerState], b: dict[str, LayerState]) -> str:
    """"bit for bit", "equal (sums to rounding)" or what differs."""
    diff, rounded = [], False
    for n in a:
        for k in LayerState.TENSORS:
            x, y = getattr(a[n], k), getattr(b[n], k)
            if torch.equal(x, y):
                continue
            if k in ROUNDED and torch.allclose(x, y, rtol=1e-5 if k == "maps" else 1e-9, atol=1e-6):
                rounded = True
            else:
                diff.append(f"{n}:{k}")
        for k in ("pooled", "pooled_cls"):
            x, y = getattr(a[n], k), getattr(b[n], k)
            if x is None or np.array_equal(x, y):
                continue
            if np.allclose(x.astype(np.float32), y.astype(np.float32), rtol=1e-3, atol=1e-6):
                rounded = True  # float16 rows of float32 means that differ in the last bit
            else:
                diff.append(f"{n}:{k}")
    return "DIFFER: " + ", ".join(diff[:5]) if diff else "equal (sums to rounding)" if rounded else "bit for bit"


def near_states(a: dict[str, LayerState], b: dict[str, LayerState]) -> str:
    """How close two runs' states are where activations differ in rounding (the fused tails): the share of top-k
    slots holding the same image, and the largest relative difference of top-k values and unit means."""
    same = [float((a[n].index == b[n].index).float().mean()) for n in a]
    rel = lambda x, y: float(((x - y).abs() / y.abs().clamp_min(1e-3)).max())
    return (f"same top-k image in {min(same):.1%}..{max(same):.1%} of slots per layer; top-k values within "
            f"{max(rel(a[n].values, b[n].values) for n in a):.2%}, unit means within "
            f"{max(rel(a[n].mean, b[n].mean) for n in a):.2%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["RN50", "ViT-B-32"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=8, help="untimed batches mined first")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--map-size", type=int, default=8)
    ap.add_argument("--paths", nargs="+", default=["forward", "forward-graph", "forward-fused", "plain", "fast-torch",
                                                   "fast-triton", "graph", "graph-fused"])
    ap.add_argument("--profile-paths", nargs="+", default=["forward-fused", "fast-triton"])
    ap.add_argument("--pooled", action="store_true", help="keep the pooled matrices too (mining's default)")
    ap.add_argument("--profile", action="store_true", help="profile fast-triton's kernels (CUDA only)")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd reductions (slow to build)")
    ap.add_argument("--quick", action="store_true", help="tiny run on the CPU: batch 2, one step")
    ap.add_argument("--side-priority", type=int, default=0, help="priority of the updates' side stream (GraphStep)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.quick:
        args.batch, args.prefill, args.iters = 2, 1, 1
    args.profile = args.profile and device.type == "cuda"
    paths = [p for p in args.paths if p in ("forward", "plain", "fast-torch") or device.type == "cuda"]
    if args.compile:
        paths.append("compiled")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; batch "
          f"{args.batch}, top_k {args.top_k}, map {args.map_size}, prefill {args.prefill} batches, {args.iters} timed")
    for arch in args.models:
        model = load_model(f"open_clip:{arch}@random:0", device=device)
        layers = [n for n, i in model.layers.items() if i.kind in ("conv", "tokens")]
        rows = {}
        fusable_blocks = any(fusable(m) for m in find_modules(model.clip, layers).values())
        for path in [p for p in paths if p not in FUSED or fusable_blocks]:
            if path == "compiled":
                import atlas.mining.layerstate as mine_module
                from atlas.kernels import mining

                torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
                compiled = torch.compile(mining.spatial_reduce_torch, dynamic=False)
                saved = mine_module.spatial_reduce
                mine_module.spatial_reduce = lambda a, i, tv, ti, r, backend=None: compiled(a, i, tv, ti, r)
                try:
                    rows[path] = run_path(model, layers, path, args, device)
                finally:
                    mine_module.spatial_reduce = saved
            else:
                rows[path] = run_path(model, layers, path, args, device)
        if "forward" in rows:  # forward-only again, last: the first run can carry one-off start-up costs
            again = run_path(model, layers, "forward", args, device)
            rows["forward"] = min(rows["forward"], again, key=lambda r: r[0])
        if args.profile:  # separate runs: their extra steps would change the states compared below
            for path in args.profile_paths:
                if path not in FUSED or fusable_blocks:
                    run_path(model, layers, path, args, device, profiled=True)
        base = rows["forward"][0]
        forwards = {p: r[0] for p, r in rows.items() if p in FORWARDS}
        best = min(forwards, key=forwards.get)
        print(f"\n{arch}: {len(layers)} layers mined ({layers[0]} .. {layers[-1]}); fastest forward-only: {best}")
        print(f"{'path':14s} {'images/s':>10s} {'ms/batch':>9s} {'vs forward':>11s} {'vs fastest':>11s} "
              f"{'cand. images':>13s} {'cand. pairs':>12s}")
        for path, (dt, _, imgs, pairs) in rows.items():
            print(f"{path:14s} {args.batch / dt:10.0f} {dt * 1e3:9.2f} {dt / base:10.3f}x {dt / rows[best][0]:10.3f}x "
                  f"{'' if path in FORWARDS or path in GRAPHED or path == 'plain' else f'{imgs:13.1%} {pairs:12.2%}'}")
        ref = rows.get("plain")
        for path in rows:
            if path.endswith("-serial") and path[:-7] in rows:  # the same kernels on the same data
                print(f"states of {path} vs {path[:-7]}: {same_states(rows[path][1], rows[path[:-7]][1])}")
            elif path in FUSED and path not in FORWARDS and "graph" in rows:
                print(f"states of {path} vs graph: {near_states(rows[path][1], rows['graph'][1])}")
            elif ref and path not in FORWARDS and path != "plain" and not path.endswith("-serial"):
                print(f"states of {path} vs plain (top-k, maps, argmax, counts, min/max, hist, mean, M2, pooled): "
                      f"{same_states(rows[path][1], ref[1])}")
        del model, rows
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
