"""Channel feature visualization: torch-lucent's render_vis vs atlas's fast path, same model, one run.

    python bench/featurevis_vs_lucent.py [--steps 512] [--batches 128] [--lucent-batches 1,16] [--quick]

Model: open_clip RN50x4 with random weights (atlas spec open_clip:RN50x4@random:0, 288 px), layer: the last
block of the last stage (visual.layer4.5; lucent's name layer4_5).  Each method renders distinct channels of
that layer for ``--steps`` Adam steps and reports seconds per neuron:

- lucent: `render_vis` with lucent's FFT image at the model's size, its default transforms and
  normalization, one channel objective per batch element summed (as lucent's docs batch neurons),
  thresholds=(steps,), no display; at batch 1 and at batch 16;
- atlas: `FastRenderer` (cut tower, per-image transforms in one grid_sample, bf16, channels_last,
  torch.compile) at each of ``--batches``, parameterized at the model's size.  Its one-time cost (trace,
  compile for that batch size) is timed apart, by a short render first, and reported.

``--quick``: atlas:tiny@random:0 on the CPU, a few steps: checks that the script runs.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch


def _lucent_without_ipython() -> None:
    """lucent imports IPython only to show images, which this bench never does: stand in for it if absent."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("IPython") is None:
        ipython, display = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        ipython.display = display
        sys.modules.update({"IPython": ipython, "IPython.display": display})
        print("note: IPython is not installed; lucent's display module gets an empty stand-in")


def lucent_render(model, layer: str, units: list[int], size: int, steps: int) -> float:
    """Seconds for lucent's render_vis on ``units`` (one per batch element) of ``layer`` (lucent's name)."""
    from lucent.optvis import objectives, param, render

    obj = objectives.Objective.sum([objectives.channel(layer, u, batch=i) for i, u in enumerate(units)])
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():  # lucent warns that the attention pool fails on its padded input
            warnings.simplefilter("ignore")
            render.render_vis(model, obj, lambda: param.image(size, batch=len(units)), thresholds=(steps,),
                              show_image=False, progress=False)
        _sync()
        return time.perf_counter() - t
    finally:
        for m in model.modules():  # lucent hooks every module and never removes its hooks
            m._forward_hooks.clear()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="open_clip:RN50x4@random:0")
    ap.add_argument("--layer", default=None, help="default: the last block of the last stage")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--batches", default="128", help="atlas batch sizes, comma-separated (e.g. 128,256)")
    ap.add_argument("--lucent-batches", default="1,16", help="lucent batch sizes ('' to skip lucent)")
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny model, CPU, few steps (checks the script)")
    args = ap.parse_args()
    if args.quick:
        args.model, args.steps, args.device = "atlas:tiny@random:0", 4, "cpu"
        args.batches, args.lucent_batches = "8", "1,2"

    from lucent.optvis.param import spatial as lucent_spatial

    from atlas.config import FeatureVisConfig
    from atlas.featurevis.fast import FastOptions, FastRenderer
    from atlas.models import load_model

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = load_model(args.model, device=device)
    conv = [n for n, i in model.layers.items() if i.kind == "conv"]
    layer = args.layer or (conv or list(model.layers))[-1]
    info = model.layer(layer)
    size = model.image_size
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"model {args.model} ({size} px), layer {layer} ({info.units} units, grid {info.grid}); {args.steps} steps; "
          f"torch {torch.__version__}; {gpu}", flush=True)
    rows: list[tuple[str, int, float, str]] = []

    lucent_batches = [int(b) for b in args.lucent_batches.split(",") if b]
    if lucent_batches:
        _lucent_without_ipython()
        if lucent_spatial.device != device:
            raise SystemExit(f"lucent puts its images on {lucent_spatial.device}; run the model there "
                             f"(--device {lucent_spatial.device})")
        visual = model.clip.visual.eval()
        for p in visual.parameters():
            p.requires_grad_(False)
        lucent_layer = layer.removeprefix("visual.").replace(".", "_")
        lucent_render(visual, lucent_layer, [0], size, 2)  # warm-up (cuDNN, allocator)
        for b in lucent_batches:
            dt = lucent_render(visual, lucent_layer, list(range(b)), size, args.steps)
            rows.append(("lucent render_vis", b, dt, ""))
            print(f"lucent batch {b}: {dt:.1f} s, {dt / b:.3f} s/neuron", flush=True)

    opts = FastOptions(dtype=args.dtype, compile=args.compile)
    for b in [int(x) for x in args.batches.split(",") if x]:
        units = list(range(b))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        renderer = FastRenderer(model, layer, opts)
        renderer.render(units, FeatureVisConfig(steps=2, size=size, batch=b))  # trace, compile, warm-up
        setup = time.perf_counter() - t
        cfg = FeatureVisConfig(steps=args.steps, size=size, batch=b)
        t = time.perf_counter()
        r = renderer.render(units, cfg)
        dt = time.perf_counter() - t
        mem = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        note = (f"compiled={renderer.compiled is not None}, traced={renderer.traced}, dtype={renderer.dtype}, "
                f"setup {setup:.1f} s{mem}, mean objective {r.history[0].mean():.3g} -> {r.objective.mean():.3g}")
        rows.append(("atlas fast", b, dt, note))
        print(f"atlas batch {b}: {dt:.1f} s, {dt / b:.3f} s/neuron ({note})", flush=True)
        del renderer

    print(f"\n{'method':<18} {'batch':>5} {'seconds':>8} {'s/neuron':>9}")
    for name, b, dt, _ in rows:
        print(f"{name:<18} {b:>5} {dt:>8.1f} {dt / b:>9.3f}")
    best = min((dt / b for name, b, dt, _ in rows if name == "atlas fast"), default=None)
    for name, b, dt, _ in rows:
        if name != "atlas fast" and best:
            print(f"speed-up of atlas's best ({best:.3f} s/neuron) over lucent at batch {b}: {dt / b / best:.1f}x")
    if best and not args.quick:
        print(f"target <= 0.25 s/neuron: {'met' if best <= 0.25 else 'NOT met'} ({best:.3f})")


if __name__ == "__main__":
    main()
