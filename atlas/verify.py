"""`atlas verify`: recompute a sample of a store's numbers with a reference path that shares nothing with mining but
the model itself, and say whether they agree.

The reference path: each image read from its original file with plain PIL (`Image.open`, EXIF orientation,
RGB; alpha over white, as atlas's decoding policy says) -- or drawn again by its generator -- and transformed by
open_clip's own validation transform (`open_clip.transform.image_transform`, or torchvision's Resize and the model's
crop rule); the image tower run eagerly in float32 with TF32 off, no autocast, no CUDA graphs, no fused blocks, no
Triton, its layers read through plain forward hooks; each unit's score (max or mean of its map) computed in float64.

For each mined layer, ``units`` random units are checked on their stored top-k images plus ``images`` random other
images, and per layer `verify` reports:

- the fraction of checked units whose stored top-k set is the reference's top-k among those images (a swap
  between two images whose reference scores differ by at most the tolerance counts as a tie, not a mismatch);
- the largest absolute and relative error of the stored numbers (top-k values, pooled spatial means, top-k maps)
  against the reference; relative to the unit's scale, its largest |reference score| among the checked images
  (a per-value relative error is meaningless for values near zero, which most units have);
- how many checked units have a sampled image whose reference score beats the lowest stored top-k score by more
  than the tolerance (it should have been in the top-k).

The tolerance depends on how the layer was mined (`TOLERANCES`, measured values in docs/store.md); the result is
written into the layer's ``verify`` group (`atlas.store.write_check`) and shown on the layer page.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from . import store
from .config import VerifyConfig
from .data import open_source
from .data.sources import FolderSource, ImageSource
from .models import LoadedModel, load_model

# Tolerance of stored numbers against the reference, as a fraction of each unit's scale, by (precision, pixels) of the
# mining config; the measurements behind them are in docs/store.md ("Tolerances", bench/verify_modes.py), about half
# of each: float32 agrees to a few ulps (other convolution algorithms, other batch sizes); bfloat16 rounds every
# activation to 8 significant bits; the speed options show the model other pixels.
TOLERANCES = {
    ("float32", "exact", "cpu"): 1e-5,  # measured: under 1e-7 of the unit's scale
    ("float32", "exact", "cuda"): 1e-4,  # measured: up to 3.5e-5 (cuDNN's algorithms differ by batch and layout)
    ("bfloat16", "exact"): 0.3,  # measured: up to 0.14
    ("float32", "approx"): 0.1,  # measured: up to 0.048
    ("bfloat16", "approx"): 0.5,  # measured: up to 0.24
    ("float32", "draft"): 1.5,  # measured: up to 0.71 (libjpeg shrinks by up to 8, and the crop moves)
    ("bfloat16", "draft"): 1.5,
}


def tolerance(config: dict, device: str = "cpu") -> float:
    """The verify tolerance of a layer mined with ``config`` (its stored MineConfig JSON, decoded) on a ``device``
    of this type ("cpu" or "cuda")."""
    key = (config.get("precision", "float32"), config.get("pixels", "exact"))
    return TOLERANCES.get((*key, device), TOLERANCES.get(key, 1.5))


def source_of(store_path: str | os.PathLike, data: str | None = None, captions: str | None = None) -> ImageSource:
    """The image source a store was mined from: ``data`` if given, else the one its ``data_source`` names
    (a folder, or a generated set with its default settings), checked against the store's listing."""
    with store.Store(store_path) as st:
        described, fingerprint = str(st.meta.get("data_source", "")), st.meta.get("data_fingerprint")
        ids = st.image_column("source_id")
    if data is None:
        kind, _, rest = described.partition(":")
        fields = dict(part.split("=", 1) for part in rest.split(":") if "=" in part)
        if kind in ("folder", "shards"):
            data = rest
        elif kind == "conceptworld":
            data = f"conceptworld:{fields.get('count')}:{fields.get('seed')}"
        elif kind == "synthetic":
            data = f"synthetic:{fields.get('count')}"
        else:
            raise store.StoreError(f"store {store_path} does not say where its images came from ({described!r}); "
                                   "pass --data")
    source = open_source(data, captions)
    if isinstance(source, FolderSource):
        listed = [e.source_id for e in source.entries[:len(ids)]]
        if listed != list(ids):
            raise store.StoreError(f"the images in {data} are not the ones store {store_path} was mined from (other "
                                   "files or names); pass --data with the original folder")
    elif source.fingerprint() != fingerprint:
        raise store.StoreError(f"{data} is not the generated set store {store_path} was mined from ({described}); "
                               "pass --data with the original source")
    return source


@dataclass
class LayerCheck:
    layer: str
    units: int  # units checked
    images: int  # distinct images recomputed for this layer
    k: int
    topk_match: float  # fraction of checked units whose top-k set matches (ties within tolerance allowed)
    max_abs: float  # largest |stored - reference| over top-k values, pooled means and maps
    max_rel: float  # the same as a fraction of the unit's scale (module docstring)
    outranked: int  # checked units where a sampled image beats a stored top-k entry beyond the tolerance
    tolerance: float
    mode: str  # how the layer was mined: "<precision>, <pixels> pixels, mined on <cpu|cuda>"
    ok: bool
    mismatched: list[int] = field(default_factory=list)  # units whose top-k set differs (first 20)
    checked: list[int] = field(default_factory=list)  # the units checked

    def line(self) -> str:
        return (f"{self.layer} ({self.mode}): {self.units} units on {self.images} images, {100 * self.topk_match:.1f}% same "
                f"top-{self.k}, max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} "
                f"(tolerance {self.tolerance:g}), {self.outranked} units outranked by a sampled image: "
                + ("ok" if self.ok else "FAILED"))


@dataclass
class VerifyResult:
    store: str
    layers: list[LayerCheck]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.layers)


def verify(model: LoadedModel, source: ImageSource, store_path: str | os.PathLike,
           config: VerifyConfig = VerifyConfig(), layers: list[str] | None = None, write: bool = True) -> VerifyResult:
    """Check ``layers`` (default: every mined layer of the model) of the store against the reference path (module
    docstring); with ``write``, record each layer's result in the store."""
    t0 = time.perf_counter()
    with store.Store(store_path) as st:
        meta = st.meta
        if meta.get("model_name") != model.name or meta.get("weights_sha256") != model.weights_sha256:
            raise store.StoreError(f"store {store_path} was mined with model {meta.get('model_spec')} (weights "
                                   f"{str(meta.get('weights_sha256'))[:12]}…), not {model.spec}; verify it with "
                                   "that model")
        status = st.image_column("status")
        recorded_sha = st.image_column("sha256")
        if len(status) != len(source) and len(status) > len(source):
            raise store.StoreError(f"store {store_path} indexes {len(status)} images, the data has {len(source)}; "
                                   "pass the data the store was mined from")
        plan = []
        rng = np.random.default_rng(config.seed)
        ok_images = np.flatnonzero(status == 0)
        for ld in st.layers(model.name):
            if layers is not None and ld.name not in layers:
                continue
            units = np.sort(rng.choice(ld.units, min(config.units, ld.units), replace=False))
            top = ld["topk/index"][units]  # [n, k]
            extra = rng.choice(ok_images, min(config.images, len(ok_images)), replace=False)
            stored = {"values": ld["topk/values"][units], "maps": ld["topk/maps"][units],
                      "pooled": ld.group["pooled"] if ld.has("pooled") else None}
            plan.append((ld.name, ld.config, units, top, np.sort(extra), stored,
                         str(ld.group.attrs.get("device", "cpu"))))
        need = np.unique(np.concatenate([np.concatenate([p[3].ravel(), p[4]]) for p in plan] or [np.zeros(0)]))
        need = need[need >= 0].astype(np.int64)
        pooled_rows = {p[0]: p[5]["pooled"][need] if p[5]["pooled"] is not None else None for p in plan}
    if not plan:
        raise store.StoreError(f"store {store_path} holds no mined layer of model {model.name} to verify")
    saes = {p[0]: _sae_arrays(store_path, model, p[0]) for p in plan if "/" in p[0]}
    acts = _reference_activations(model, source, need, recorded_sha, {p[0]: p[2] for p in plan}, config.batch_size,
                                  saes)
    row = {int(i): r for r, i in enumerate(need)}
    checks = []
    for name, cfg, units, top, extra, stored, mined_on in plan:
        tol = tolerance(cfg, mined_on)
        checks.append(_check_layer(name, cfg, units, top, extra, stored, pooled_rows[name], acts[name], row, tol,
                                   mined_on))
    result = VerifyResult(str(store_path), checks, time.perf_counter() - t0)
    if write:
        for c in checks:
            store.write_check(store_path, model.name, c.layer, "verify", {"units": np.array(c.checked, np.int64)}, {
                **{k: v for k, v in asdict(c).items() if k not in ("layer", "checked")}, "config": asdict(config),
                "device": str(model.device), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return result


def _check_layer(name: str, cfg: dict, units: np.ndarray, top: np.ndarray, extra: np.ndarray, stored: dict,
                 pooled_rows: np.ndarray | None, ref: np.ndarray, row: dict[int, int], tol: float,
                 mined_on: str = "cpu") -> LayerCheck:
    """Compare one layer's stored numbers with the reference maps ``ref`` [images, len(units), h, w] float64 of the
    checked ``units`` (``row``: image index -> row of ``ref`` and ``pooled_rows``)."""
    rank_by = cfg.get("rank_by", "max")
    k = top.shape[1]
    max_abs = max_rel = 0.0
    match, outranked, mismatched = 0, 0, []
    for j, u in enumerate(units):
        maps = ref[:, j]  # [M, h, w] float64 over the needed images
        score = maps.reshape(len(maps), -1).max(1) if rank_by == "max" else maps.reshape(len(maps), -1).mean(1)
        mean = maps.reshape(len(maps), -1).mean(1)
        t = [int(i) for i in top[j] if i >= 0]
        cand = sorted(set(t) | {int(i) for i in extra})
        s = {i: score[row[i]] for i in cand}
        scale = max([abs(v) for v in s.values()] + [1e-12])  # the unit's scale on the checked images
        atol = tol * scale

        def err(stored_v: np.ndarray, ref_v: np.ndarray) -> None:
            nonlocal max_abs, max_rel
            d = np.abs(stored_v.astype(np.float64) - ref_v)
            if d.size:
                max_abs = max(max_abs, float(d.max()))
                max_rel = max(max_rel, float(d.max()) / scale)

        err(stored["values"][j][:len(t)], np.array([s[i] for i in t]))
        if pooled_rows is not None:
            err(pooled_rows[[row[i] for i in cand], u], mean[[row[i] for i in cand]])
        mh, mw = stored["maps"].shape[2:]
        pooled_maps = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps[[row[i] for i in t]]), (mh, mw))
        err(stored["maps"][j][:len(t)], pooled_maps.numpy())
        # top-k set among the candidates: the reference's k best (ties by index), swaps within the tolerance allowed
        best = sorted(cand, key=lambda i: (-s[i], i))[:len(t)]
        gone, came = set(t) - set(best), set(best) - set(t)
        if not gone or max(s[i] for i in came) - min(s[i] for i in gone) <= atol:
            match += 1
        elif len(mismatched) < 20:
            mismatched.append(int(u))
        if t and len(t) == k and any(s[i] > min(s[x] for x in t) + atol for i in cand if i not in set(t)):
            outranked += 1
    n = len(units)
    ok = bool(max_rel <= tol and match == n and outranked == 0)
    mode = f"{cfg.get('precision', 'float32')}, {cfg.get('pixels', 'exact')} pixels, mined on {mined_on}"
    return LayerCheck(name, n, len({*extra.tolist(), *top[top >= 0].tolist()}), k, match / n, max_abs, max_rel,
                      outranked, tol, mode, ok, mismatched, [int(u) for u in units])


# ---------------------------------------------------------------------------------------------------------------
# the reference path


def _reference_activations(model: LoadedModel, source: ImageSource, images: np.ndarray, recorded_sha: np.ndarray,
                           units: dict[str, np.ndarray], batch: int,
                           saes: dict[str, tuple[str, dict[str, np.ndarray], int]] | None = None
                           ) -> dict[str, np.ndarray]:
    """{layer: [len(images), len(units), h, w] float64}: the maps of ``units[layer]`` on ``images``, computed from
    the original images by the reference path.  ``saes``: for an SAE's layer, (its base layer, its arrays, k): the
    base layer's whole map goes through the SAE's formula in float64 (`_sae_reference`)."""
    saes = saes or {}
    transform = _reference_transform(model)
    modules = dict(model.clip.named_modules())
    layers = list(units)
    base = {n: saes[n][0] if n in saes else n for n in layers}
    infos = {n: model.layer(base[n]) for n in layers}
    picks = {n: torch.as_tensor(units[n], dtype=torch.int64, device=model.device) for n in layers}
    got: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    captured: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(_keep(captured, n)) for n in dict.fromkeys(base.values())]
    try:
        with torch.no_grad(), _ieee_float32():
            for i in range(0, len(images), batch):
                pixels = torch.stack([transform(_reference_image(source, int(j), recorded_sha)) for j in
                                      images[i:i + batch]]).to(model.device)  # [b, 3, S, S] float32
                model.clip.encode_image(pixels)
                for n in layers:
                    full = infos[n].canonical(captured[base[n]])  # [b, units or d, h, w]
                    if n in saes:
                        full = _sae_reference(full, saes[n][1], saes[n][2], units[n])  # [b, n_units, h, w] f64
                        got[n].append(full.numpy())
                        continue
                    maps = full.index_select(1, picks[n])  # [b, n_units, h, w]
                    got[n].append(maps.to("cpu", torch.float64).numpy())
                captured.clear()
    finally:
        for h in hooks:
            h.remove()
    return {n: np.concatenate(got[n]) if got[n] else np.zeros((0, len(units[n]), *infos[n].grid)) for n in layers}


def _sae_arrays(store_path: str | os.PathLike, model: LoadedModel, layer: str
                ) -> tuple[str, dict[str, np.ndarray], int]:
    """(base layer, the SAE's arrays, k) of the virtual layer ``layer`` (``base/saeN``), read from beside the store."""
    arrays, meta = store.read_sae(store_path, model.name, layer, model.weights_sha256)
    return str(meta["layer"]), arrays, int(meta["k"])


def _sae_reference(maps: torch.Tensor, arrays: dict[str, np.ndarray], k: int, units: np.ndarray) -> torch.Tensor:
    """The SAE's features ``units`` at every position of ``maps`` [b, d, h, w], in float64 by the formula alone
    (docs/sae.md: pre = w_enc (x - b_pre) + b_enc, the k largest kept, ReLU): [b, len(units), h, w]."""
    b, d, h, w = maps.shape
    x = maps.to("cpu", torch.float64).permute(0, 2, 3, 1).reshape(-1, d)  # [b*h*w, d]
    w_enc, b_enc, b_pre = (torch.from_numpy(np.asarray(arrays[t], np.float64)) for t in ("w_enc", "b_enc", "b_pre"))
    cols = torch.as_tensor(units)
    z = torch.empty(x.shape[0], len(units), dtype=torch.float64)
    for i in range(0, x.shape[0], 2048):  # (2,048 positions x F float64 at a time)
        pre = (x[i:i + 2048] - b_pre) @ w_enc.T + b_enc  # [positions, F]
        kth = pre.topk(k, dim=1).values[:, -1:]  # [positions, 1]: the k-th largest
        z[i:i + 2048] = torch.where(pre >= kth, pre, torch.zeros(())).clamp_min(0)[:, cols]
    return z.reshape(b, h, w, len(units)).permute(0, 3, 1, 2)


def _keep(captured: dict[str, torch.Tensor], name: str):
    def hook(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        captured[name] = out.detach().clone()  # before any later in-place op
    return hook


@contextmanager
def _ieee_float32() -> Iterator[None]:
    """Plain float32 arithmetic on CUDA (TF32 off) for the reference forward; restored after.  (A copy of
    `atlas.mining.float32_matmuls` on purpose: the reference path shares no code with mining but the model.)"""
    kept = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = kept[:2]
        torch.set_float32_matmul_precision(kept[2])


def _reference_transform(model: LoadedModel):
    """The model's validation transform from its authors' libraries: open_clip's for the "round" crop (open_clip
    and OpenAI models, SigLIP's squash), torchvision's Resize with a floor crop for Hugging Face's CLIP."""
    import open_clip
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    size = model.image_size
    if model.crop_rule == "round" or model.resize_mode == "squash":
        return open_clip.transform.image_transform(size, is_train=False, mean=model.mean, std=model.std,
                                                   resize_mode=model.resize_mode)

    def floor_crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        return TF.crop(im, (h - size) // 2, (w - size) // 2, size, size)

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), floor_crop,
                      T.ToTensor(), T.Normalize(model.mean, model.std)])


def _reference_image(source: ImageSource, index: int, recorded_sha: np.ndarray) -> Image.Image:
    """Image ``index`` as plain PIL reads it (files) or its generator draws it (generated sources)."""
    if not isinstance(source, FolderSource):
        sample = source.sample(index)
        if sample.image is None:
            raise store.StoreError(f"image {index} of {source.description} cannot be drawn: {sample.message}")
        return sample.image.convert("RGB")
    path = source.path(index)
    data = path.read_bytes()
    want = bytes(recorded_sha[index]).decode() if isinstance(recorded_sha[index], bytes) else str(recorded_sha[index])
    if want and hashlib.sha256(data).hexdigest() != want:
        raise store.StoreError(f"{path} changed since it was mined (its sha256 is in /images/sha256): restore it, "
                               "or mine the changed data into a new store")
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if im.mode != "I" or a.max() > 255 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))  # over white
    return im.convert("RGB")


def already_verified(store_path: str | os.PathLike, model_name: str, config: VerifyConfig) -> bool:
    """Whether every mined layer of ``model_name`` holds a passing check made with ``config`` (a rebuild skips it)."""
    with store.Store(store_path) as st:
        checks = [ld.check("verify") for ld in st.layers(model_name)] if model_name in st.models() else []
    return bool(checks) and all(c is not None and c.get("ok") and c.get("config") == asdict(config) for c in checks)


def verify_store(store_path: str | os.PathLike, *, data: str | None = None, captions: str | None = None,
                 config: VerifyConfig = VerifyConfig(), layers: list[str] | None = None, device: str = "auto",
                 trust_checkpoint: bool = False) -> VerifyResult:
    """`verify` a store with the model its ``model_spec`` names and the images it was mined from (`source_of`)."""

    with store.Store(store_path) as st:
        spec = st.meta["model_spec"]
    source = source_of(store_path, data, captions)
    model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
    return verify(model, source, store_path, config, layers)
