"""`atlas mine`: stream images through the model and keep, per neuron, the exact top-k and statistics.

For each layer a `LayerState` (atlas.mining.layerstate) holds on the model's device the running top-k with maps, the
statistics and histogram of the per-image score, and optionally the [images, units] matrix of spatial means.
Images come from `atlas.mining.batches` (files through atlas.data.loader's JpegLoader); on CUDA the forward and the
state updates of full batches are replayed from CUDA graphs (atlas.mining.cuda_graphs), and mined ResNet blocks end
in one kernel that also reduces their output (atlas.mining.fused_tails).

Batches are fixed slices of the image index, so a run resumed from a checkpoint computes exactly what
an uninterrupted run computes.  Checkpoints are written atomically to the store's work folder.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from .. import store
from ..version import __version__
from ..capture import hooked
from ..config import MineConfig, digest, to_json
from ..data.sources import ImageSource
from .batches import Batch, FilePlan, file_batches, resize_on
from .batches import batches as mine_batches
from .fused_tails import fused_tails
from .cuda_graphs import GraphStep
from ..kernels import choose, triton_available
from .layerstate import MIN_RANGE_EXP, LayerState
from . import distributed
from .machine import MachineFit, machine_fit
from ..models import LayerInfo, LoadedModel
from .thumbs import PassThumbs, make_thumbnails
from . import virtual as sae_layers

if TYPE_CHECKING:
    from .early import Early

__all__ = ["MIN_RANGE_EXP", "LayerState", "MineResult", "mine"]

Progress = Callable[[int, int], None]


@dataclass
class MineResult:
    store: Path
    layers: tuple[str, ...]
    images: int
    bad: int
    skipped_layers: tuple[str, ...]  # already in the store with the same config
    resumed_from: int  # image index the run resumed at (0: fresh start)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of mining's phases (see `mine`)
    graph_batches: int = 0  # batches replayed from CUDA graphs (atlas.mining.cuda_graphs)
    fused_layers: tuple[str, ...] = ()  # layers reduced inside their block's last kernel (atlas.mining.fused_tails)
    nonfinite: dict[str, int] = field(default_factory=dict)  # per mined layer: image x unit maps holding inf/NaN
    first_batch_at: float = 0.0  # time.time() when the first batch had gone through the model (0: none did)
    steady: tuple[int, float] = (0, 0.0)  # images after the first batch, seconds they took (to the last batch)
    rank: int = 0  # this process among `world` torchrun processes (atlas.mining.distributed); rank 0 wrote the store
    world: int = 1
    part: tuple[int, int] = (0, 0)  # the images [start, stop) this process mined


def _precision(precision: str, device: torch.device) -> str:
    """MineConfig.precision with "auto" resolved: bfloat16 on a CUDA GPU that has it, else float32."""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def _resolved(config: MineConfig, device: torch.device, fit: MachineFit) -> MineConfig:
    """The config with its "auto" settings resolved for ``device``, as the store records it."""
    return replace(config, precision=_precision(config.precision, device),
                   batch_size=config.batch_size or fit.batch_size)


@contextmanager
def float32_matmuls(on: bool = True) -> Iterator[None]:
    """Float32 means float32: TF32 off for CUDA matmuls and convolutions (and the float32 matmul precision
    "highest") while the body runs, put back as it was afterwards.  (``on=False``: leave them as they are.)"""
    if not on:
        yield
        return
    kept = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = kept[:2]
        torch.set_float32_matmul_precision(kept[2])


@contextmanager
def _model_path(model: LoadedModel, precision: str, graphs: bool = False) -> Iterator[torch.memory_format]:
    """The image tower as mining runs it: channels_last on CUDA, under bfloat16 autocast for
    ``precision="bfloat16"``, on CUDA with the weights and biases of its convolutions, linear layers and attention
    projections cast to bfloat16 once (`_cast_once`) instead of at every call; everything put back as it was
    afterwards.  Yields the input's memory format.  (``graphs``: the step is recorded in a CUDA graph, which
    autocast's own cast cache must not be used for.)"""
    dev = model.device
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    weights = [p for p in model.visual.parameters() if p.dim() == 4 and p.is_contiguous()]
    if fmt == torch.channels_last:
        model.visual.to(memory_format=fmt)
    bf16 = precision == "bfloat16"
    try:
        with _cast_once(model.visual, bf16 and dev.type == "cuda"), float32_matmuls(not bf16), \
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graphs):
            yield fmt
    finally:
        for p in weights:
            p.data = p.data.contiguous()


@contextmanager
def _cast_once(module: torch.nn.Module, on: bool) -> Iterator[None]:
    """Cast the float32 parameters that bfloat16 autocast casts at every call (the weights and biases of Conv2d,
    Linear and MultiheadAttention's input projection) to bfloat16 now, and back afterwards.  The casts are the
    same roundings, so results under CUDA autocast do not change (tests/test_mine.py); the step saves a cast kernel
    per layer, which under a CUDA graph, where autocast's cache is off, is recorded in every replay.  Not for CPU
    autocast: there MultiheadAttention's fused fast path, which ignores CPU autocast and computes in float32 with
    float32 weights, would switch to the bfloat16 path."""
    kept = []
    try:
        for m in module.modules() if on else ():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                params = (m.weight, m.bias)
            elif isinstance(m, torch.nn.MultiheadAttention):
                params = (m.in_proj_weight, m.in_proj_bias)
            else:
                continue
            for p in params:
                if p is not None and p.dtype == torch.float32:
                    kept.append((p, p.data))
                    p.data = p.data.to(torch.bfloat16)
        yield
    finally:
        for p, data in kept:
            p.data = data


def _use_graphs(cuda_graphs: bool | None, device: torch.device) -> bool:
    """mine()'s ``cuda_graphs`` resolved: None records the step in CUDA graphs where the Triton kernels run."""
    kernels = choose(None, torch.empty(0, device=device))
    possible = device.type == "cuda" and kernels == "triton"
    if cuda_graphs and not possible:
        raise ValueError(f"cuda_graphs=True needs a CUDA device and the Triton kernels (device {device}, kernels "
                         f"{kernels!r}); leave cuda_graphs unset to choose")
    return possible if cuda_graphs is None else cuda_graphs


def _fusable_layers(model: LoadedModel, infos: list[LayerInfo], fuse_blocks: bool | None) -> dict[str, object]:
    """mine()'s ``fuse_blocks`` resolved: {layer: module} of the layers mined inside their block's last kernel
    (atlas.mining.fused_tails).  None: every fusable conv layer where the Triton kernels run."""
    from ..capture import find_modules
    from .fused_tails import fusable

    kernels = choose(None, torch.empty(0, device=model.device))
    if fuse_blocks and kernels != "triton":
        why = ("triton does not import" if not triton_available() else
               f"the kernels resolve to {kernels!r} for device {model.device} (ATLAS_KERNELS="
               f"{os.environ.get('ATLAS_KERNELS', 'unset')}; 'auto' takes Triton on CUDA only)")
        raise ValueError(f"fuse_blocks=True needs the Triton kernels, but {why}; leave fuse_blocks unset to choose")
    if not (kernels == "triton" if fuse_blocks is None else fuse_blocks):
        return {}
    modules = find_modules(model.clip, [i.name for i in infos if i.kind == "conv"])
    fused = {n: m for n, m in modules.items() if fusable(m)}
    if fuse_blocks and not fused:
        warnings.warn(f"fuse_blocks=True: none of the mined layers is an open_clip ResNet block in eval mode "
                      f"({', '.join(i.name for i in infos)}); they are mined through hooks", stacklevel=3)
    return fused


def _record(image_state: dict[str, object], b: Batch) -> None:
    """Each image's status, sha256 and, for bad files, message."""
    for k, i in enumerate(range(b.start, b.stop)):
        reason, message = b.bad.get(i, ("", ""))
        image_state["status"][i] = store.REASON_CODES.index(reason)
        image_state["sha256"][i] = b.sha256[k].encode()
        if reason:
            image_state["messages"][i] = message


def _run_meta(model: LoadedModel, source: ImageSource) -> dict[str, object]:
    return {
        "atlas_version": __version__, "model_spec": str(model.spec), "model_name": model.name,
        "weights_sha256": model.weights_sha256, "image_size": model.image_size,
        "data_source": source.description, "data_fingerprint": source.fingerprint(),
    }


def mine(model: LoadedModel, source: ImageSource, store_path: str | os.PathLike,
         config: MineConfig = MineConfig(), *, num_workers: int | None = None, checkpoint_seconds: float = 30.0,
         progress: Progress | None = None, cuda_graphs: bool | None = None, fuse_blocks: bool | None = None,
         resize: str = "auto", log: Callable[[str], None] | None = None, early: Early | None = None) -> MineResult:
    """Mine ``config.layers`` (default: the model's default layers) of ``source`` into the store.

    Resumes from the store's work folder after a crash; layers already mined with the same config are skipped.
    Raises StoreBusy if another process writes the store.  ``num_workers``: image-decoding processes (0: decode
    here; None: what fits the machine, `atlas.mining.machine`, as ``config.batch_size=None`` does for the batch).
    ``log``: told the settings in one line before the first batch.  The result's ``seconds``: "setup",
    "first_batch" (waiting for the first decoded batch: worker start-up), "wait" (for later batches), "forward"
    (host time of the forwards and updates, GPU waits included), "checkpoint", "commit" (writing the store, its
    copy and fsync), "pooled" (the commit's pooled matrices), "thumbnails" (the commit's thumbnails: for files,
    copied from those the decoding processes made while mining, `atlas.mining.thumbs`; else decoded again).
    ``cuda_graphs``: replay the step of full batches from CUDA graphs (`atlas.mining.cuda_graphs`; None: wherever
    the Triton kernels run; results are the same).  ``fuse_blocks``: mine ResNet blocks inside their last kernel
    (`atlas.mining.fused_tails`; None: wherever the Triton kernels run; the activations agree to a unit in the
    last place).  ``resize``: where the resize of files runs, "cpu"
    (the decoding processes), "device" (the model's device) or "auto" ("cpu", `resize_on`); the pixels are the
    same (`config.pixels` says which; "approx" always resizes on the device).  ``early``: decoding processes
    started before the model was built (`atlas.mining.early`), used if they decode what this pass needs, else
    stopped.

    In float32 (``config.precision``), TF32 is off for the whole run (`float32_matmuls`).

    Started by torchrun (WORLD_SIZE > 1), each process mines its part of the images and rank 0 merges them and
    writes the store, the one a single process writes (`atlas.mining.distributed`).
    """
    path = Path(store_path)
    t0 = time.perf_counter()
    infos, virtual = sae_layers.resolve_layers(model, path, config.layers or model.default_layers)  # SAEs: docs/sae.md
    layers = tuple(i.name for i in infos)  # canonical names, also for aliases
    fit = machine_fit(model.device)
    config = _resolved(replace(config, layers=tuple(layers)), model.device, fit)
    num_workers = distributed.local_share(fit.workers) if num_workers is None else num_workers
    resize = resize_on(resize, model.device)
    n_images = min(len(source), config.max_images or len(source))
    meta = _run_meta(model, source)
    team = distributed.join()  # alone, or one of torchrun's processes
    with team.lock(path):
        store.check_compatible(path, meta)
        todo, skipped = _layers_to_mine(path, model.name, infos, config)
        work = store.work_dir(path) / f"mine-{digest(meta['weights_sha256'], meta['data_fingerprint'], config)}"
        team.agree("settings", f"{work.name} {[i.name for i in todo]} {n_images}")
        if not todo:
            if team.leader:
                store.remove_work(work)  # left by a run killed after its commit, before its clean-up
            return MineResult(path, tuple(layers), n_images, 0, tuple(i.name for i in skipped), 0,
                              rank=team.rank, world=team.world)
        work.mkdir(parents=True, exist_ok=True)
        part = team.part(work, n_images, config.batch_size)
        if log:
            log(f"mine: {len(todo)} layers x {n_images} images on {model.device}: batch {config.batch_size}, "
                f"{num_workers} decoding workers ({fit.why}), {config.precision}, {config.pixels} pixels"
                + (f"; rank {team.rank} of {team.world}: images [{part.start}, {part.stop})" if team.world > 1 else ""))
        states, image_state, position = _open_states(part.work, todo, config, n_images, model.device, part)
        side = PassThumbs.size_for(source, n_images, config.thumb_size)  # 0: thumbnails decoded at the commit
        made = PassThumbs(part.work, n_images, side) if side else None
        resumed_from = position
        last_ckpt = time.monotonic()
        current: dict[str, torch.Tensor] = {}
        seconds = dict.fromkeys(("setup", "first_batch", "wait", "forward", "checkpoint", "commit", "pooled",
                                 "thumbnails"), 0.0)

        def update(name: str, out: torch.Tensor) -> None:
            states[name].update(current["index"], out)

        consume = sae_layers.consumer(states, virtual, current, update) if virtual else update
        graphs = _use_graphs(cuda_graphs, model.device) and not virtual
        bases = {v.base.name for v in virtual.values()}
        fused = {n: m for n, m in _fusable_layers(model, todo, fuse_blocks).items() if n not in bases}
        hooks = sae_layers.hook_names([i.name for i in todo if i.name not in fused], virtual, [i.name for i in todo])
        on_device = torch.cuda.device(model.device) if model.device.type == "cuda" else nullcontext()
        with on_device, torch.no_grad(), hooked(model.clip, hooks, consume), \
                fused_tails(fused, states, current), _model_path(model, config.precision, graphs) as memory_format:
            def eager(x: torch.Tensor, index: torch.Tensor) -> None:
                current["index"] = index
                model.clip.encode_image(x)

            step = GraphStep(model.clip.encode_image, current, list(states.values()), config.batch_size) \
                if graphs else eager
            plan = FilePlan.of(model, position, part.stop, config.batch_size, num_workers, config.pixels, resize,
                               made.size if made else 0)
            if early is not None and early.plan == plan:
                batches = file_batches(model, early.loader)  # decoding since before the model was built
            else:
                if early is not None:
                    early.close()
                    if log:
                        log(f"mine: the decoding started before the model was built does not fit this pass "
                            f"({early.plan} against {plan}); decoding again")
                batches = mine_batches(model, source, position, part.stop, config.batch_size, num_workers,
                                       config.pixels, resize, plan.thumbs)
            seconds["setup"], t = time.perf_counter() - t0, time.perf_counter()
            if progress:
                progress(position - part.start, part.stop - part.start)  # the start (a resumed run starts past 0)
            first_at, first_stop = 0.0, position
            for b in batches:
                t = _lap(seconds, "wait" if seconds["first_batch"] else "first_batch", t)
                _record(image_state, b)
                if made is not None and b.thumbs is not None:
                    made.put(b.good, b.thumbs.numpy())
                if b.good:
                    step(b.pixels.contiguous(memory_format=memory_format), b.index)
                position = b.stop
                if not first_at:
                    _sync(model.device)  # once: the first batch is through the model, not only queued
                    first_at, first_stop = time.time(), position
                if progress:
                    progress(position - part.start, part.stop - part.start)
                t = _lap(seconds, "forward", t)
                if time.monotonic() - last_ckpt >= checkpoint_seconds or position >= part.stop:
                    if made is not None:
                        made.flush()  # before the checkpoint that counts these images as done
                    _checkpoint(part.work, states, image_state, position)
                    last_ckpt = time.monotonic()
                t = _lap(seconds, "checkpoint", t)
            _sync(model.device)
            steady = (position - first_stop, time.time() - first_at if first_at else 0.0)
        if not (part.work / "checkpoint.npz").exists():  # a part without batches
            _checkpoint(part.work, states, image_state, position)
        if team.world > 1:
            team.barrier()  # every rank's last checkpoint is written
            if not team.leader:
                return MineResult(path, tuple(layers), n_images, int(np.count_nonzero(image_state["status"])),
                                  tuple(i.name for i in skipped), resumed_from, seconds, 0, tuple(fused), {}, first_at,
                                  steady, team.rank, team.world, (part.start, part.stop))
            states, image_state, made = distributed.merge(team, work, todo, config, n_images, log, side)
        parts = _commit(path, model, source, config, todo, states, image_state, meta, n_images, tuple(fused),
                        num_workers, made, virtual)
        store.remove_work(work)
        _lap(seconds, "commit", t)
        seconds["commit"] -= sum(parts.values())  # "commit" keeps the rest of the commit
        seconds.update(parts)
        bad = int(np.count_nonzero(image_state["status"]))
        nonfinite = {name: int(st.nonfinite_maps.sum()) for name, st in states.items()}
        return MineResult(path, tuple(layers), n_images, bad, tuple(i.name for i in skipped), resumed_from, seconds,
                          step.replays if graphs else 0, tuple(fused), nonfinite, first_at, steady, team.rank,
                          team.world, (part.start, part.stop))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lap(seconds: dict[str, float], phase: str, since: float) -> float:
    now = time.perf_counter()
    seconds[phase] += now - since
    return now


def _layers_to_mine(path: Path, model_name: str, infos: list[LayerInfo],
                    config: MineConfig) -> tuple[list[LayerInfo], list[LayerInfo]]:
    if not path.exists():
        return infos, []
    todo, skipped = [], []
    with store.Store(path) as st:
        for info in infos:
            if not st.has_layer(model_name, info.name):
                todo.append(info)
                continue
            old = st.layer(model_name, info.name).group.attrs["config"]
            was, now = _comparable(json.loads(old)), json.loads(_layer_config_json(config))
            if was != now:
                differ = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
                hint = (f" (to add to it, pass --precision {was['precision']}: 'auto' resolves by device, bfloat16 "
                        "on CUDA)" if differ == ["precision"] else
                        " (it was mined before atlas showed the model its exact pixels: JPEGs drafted, the crop "
                        "rounded differently)" if was.get("pixels") == "legacy" else "")
                raise store.StoreError(
                    f"store {path} already holds layer {info.name} mined with other settings ({', '.join(differ)} "
                    f"differ: {old}); write to another store path to mine it differently{hint}")
            skipped.append(info)
    return todo, skipped


def _comparable(old: dict) -> dict:
    """A stored layer config in today's terms: a layer mined before MineConfig had ``precision`` was mined in
    float32; one mined before ``pixels`` existed saw round-1 pixels (drafted JPEGs, rounded crop): "legacy"."""
    old = {"precision": "float32", **old}
    if "pixels" not in old:
        old.pop("resize", None)
        old["pixels"] = "legacy"
    return old


def _layer_config_json(config: MineConfig) -> str:
    return to_json(replace(config, layers=()))


def _open_states(work: Path, todo: list[LayerInfo], config: MineConfig, n_images: int, device: torch.device,
                 part: distributed.Part | None = None) -> tuple[dict[str, LayerState], dict[str, object], int]:
    """The layers' states, the image state and the position to start at: fresh, or from the work folder's last
    checkpoint.  ``part``: this process's images (`atlas.mining.distributed`; default all of them)."""
    part = part or distributed.Part(work, 0, n_images, batch_size=config.batch_size)
    states = {}
    for info in todo:  # pooled matrices: [N, U] float32 (a rank's rows only), kept on disk between checkpoints
        file = info.name.replace("/", "~")  # an SAE's layer, layer/saeN: one file
        pooled = part.matrix(f"pooled-{file}.npy", info.units, n_images) if config.keep_pooled else None
        cls = part.matrix(f"pooled_cls-{file}.npy", info.units, n_images) \
            if config.keep_pooled and info.prefix_tokens else None
        states[info.name] = part.layer_state(info, config, device, pooled, cls)
    image_state: dict[str, object] = {"status": np.zeros(n_images, np.uint8),
                                      "sha256": np.zeros(n_images, "S64"), "messages": {}}
    position = part.start
    ckpt = work / "checkpoint.npz"
    if ckpt.exists():
        with np.load(ckpt, allow_pickle=False) as z:
            position = int(z["position"])
            image_state["status"] = z["status"].copy()
            image_state["sha256"] = z["sha256"].copy()
            image_state["messages"] = dict(zip(z["msg_index"].tolist(), z["msg_text"].tolist()))
            for name, st in states.items():
                st.load_state_dict({k: z[f"{name}|{k}"] for k in LayerState.TENSORS})
    return states, image_state, position


def _checkpoint(work: Path, states: dict[str, LayerState], image_state: dict, position: int) -> None:
    for st in states.values():
        st.drain()
        for m in (st.pooled, st.pooled_cls):
            if m is not None:
                m.flush()
    msgs = image_state["messages"]
    arrays = {"position": np.array(position), "status": image_state["status"],
              "sha256": image_state["sha256"], "msg_index": np.array(sorted(msgs), dtype=np.int64),
              "msg_text": np.array([msgs[i] for i in sorted(msgs)], dtype=str)}
    for name, st in states.items():
        arrays.update({f"{name}|{k}": v for k, v in st.state_dict().items()})
    store.save_checkpoint(work / "checkpoint.npz", **arrays)


def _commit(path: Path, model: LoadedModel, source: ImageSource, config: MineConfig,
            todo: list[LayerInfo], states: dict[str, LayerState], image_state: dict,
            meta: dict[str, object], n_images: int, fused: tuple[str, ...] = (),
            num_workers: int = 0, made: PassThumbs | None = None,
            virtual: dict | None = None) -> dict[str, float]:
    """Write the mined layers, their pooled matrices and the thumbnails of their top images into the store in one
    transaction.  Returns the seconds spent on the "pooled" matrices and the "thumbnails"."""
    parts = {"pooled": 0.0, "thumbnails": 0.0}
    for st in states.values():
        st.drain()
    status = image_state["status"]
    reasons = [store.REASON_CODES[c] for c in status]
    messages = image_state["messages"]
    with store.transaction(path) as f:
        store.write_run(f, meta, n_images)
        entries = source.entries[:n_images]
        store.write_images(f, {
            "source_id": [e.source_id for e in entries], "caption": [e.caption for e in entries],
            "label": [e.label for e in entries], "sha256": image_state["sha256"], "status": status,
            "reason": [messages.get(i, reasons[i]) if status[i] else "" for i in range(n_images)]})
        for info in todo:
            st = states[info.name]
            values = st.values.cpu().numpy()
            cnt = st.count.cpu().numpy()
            g = store.write_layer(f, model.name, info.name, {
                "kind": info.kind, "units": info.units, "grid": list(info.grid), "config": _layer_config_json(config),
                "fused": info.name in fused, "device": model.device.type}, {
                "topk/values": values,
                # a slot whose value is -inf holds a non-finite score (the merge ranks them below every finite one,
                # counted in stats/nonfinite): stored as empty, so a top-k lists finite scores only
                "topk/index": np.where(values == -np.inf, -1, st.index.cpu().numpy()),
                "topk/argmax": st.argmax.cpu().numpy(),
                "topk/maps": st.maps.cpu().numpy().reshape(info.units, config.top_k, *st.map_hw),
                "stats/count": cnt, "stats/mean": st.mean.cpu().numpy(),
                "stats/std": np.sqrt(st.m2.cpu().numpy() / np.maximum(cnt, 1)),
                "stats/min": st.min.cpu().numpy(), "stats/max": st.max.cpu().numpy(),
                "stats/positive": st.positive.cpu().numpy(), "stats/nonfinite": st.nonfinite.cpu().numpy(),
                "stats/nonfinite_maps": st.nonfinite_maps.cpu().numpy(), "stats/hist": st.hist.cpu().numpy(),
                "stats/range": np.ldexp(1.0, st.range_exp.cpu().numpy())})
            if virtual and info.name in virtual:
                sae_layers.write_links(g, virtual[info.name], path)
            t = time.perf_counter()
            for key, m in (("pooled", st.pooled), ("pooled_cls", st.pooled_cls)):
                if m is not None:  # skipped images have no activations: NaN rows
                    store.put_rows(g, key, m, status != 0)
            parts["pooled"] += time.perf_counter() - t
        t = time.perf_counter()
        needed = np.unique(np.concatenate([st.index.cpu().numpy().ravel() for st in states.values()]))
        make_thumbnails(f, model, source, needed[needed >= 0].tolist(), config.thumb_size, n_images, num_workers,
                        made)
        parts["thumbnails"] += time.perf_counter() - t
    return parts
