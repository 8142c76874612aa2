"""Virtual layers: an SAE's features mined like a real layer's units (docs/sae.md).

A layer name ``<layer>/saeN`` (atlas.names) resolves to a `LayerInfo` of kind "sae" whose units are the SAE's
features on its layer's grid.  Mining hooks the real layer, encodes every position of its canonical map with the
SAE (`atlas.kernels.sae.feature_maps`: the forward lives in the kernels, since mining may not import atlas.sae)
and hands the feature maps [B, F, h, w] to the virtual layer's `LayerState`, in slices of images small enough
that a slice's feature maps stay under ``max_floats``.  The SAE's weights come from beside the store
(`atlas.store.read_sae`), checked to be made for this model and layer.  At the commit, the virtual layer's group
also gets the links between features and neurons (`write_links`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .. import store
from ..kernels.sae import SaeTensors, feature_maps
from ..models import LayerInfo, LoadedModel
from ..names import split_sae_layer

LINKS = 8  # neurons listed per feature, features listed per neuron


@dataclass(frozen=True)
class Virtual:
    base: LayerInfo  # the real layer the SAE reads
    sae: SaeTensors  # on the model's device
    meta: dict  # the SAE file's metadata (atlas.store.sae)


def resolve_layers(model: LoadedModel, store_path: str | os.PathLike,
                   names: Sequence[str]) -> tuple[list[LayerInfo], dict[str, Virtual]]:
    """``names`` -> (their LayerInfos, {virtual layer: Virtual}); real layers through `LoadedModel.layer`."""
    infos, virtual = [], {}
    for name in names:
        parts = split_sae_layer(name)
        if parts is None:
            infos.append(model.layer(name))
            continue
        base = model.layer(parts[0])
        canonical = f"{base.name}/{parts[1]}"
        arrays, meta = store.read_sae(store_path, model.name, canonical, model.weights_sha256)
        if arrays["w_enc"].shape[1] != base.units:
            raise store.SaeFileError(f"the SAE {canonical} reads {arrays['w_enc'].shape[1]} units, layer {base.name} "
                                     f"has {base.units}; train it again with `atlas sae train`")
        sae = SaeTensors(*(torch.from_numpy(np.asarray(arrays[t], np.float32)).to(model.device)
                           for t in ("w_enc", "b_enc", "w_dec", "b_pre")), int(meta["k"]))
        virtual[canonical] = Virtual(base, sae, meta)
        infos.append(LayerInfo(canonical, "sae", sae.width, base.grid, "nchw"))
    return infos, virtual


def hook_names(real: Sequence[str], virtual: dict[str, Virtual], todo: Sequence[str]) -> list[str]:
    """The modules to hook: the real layers to mine and the layers the SAEs being mined read."""
    bases = [v.base.name for n, v in virtual.items() if n in todo]
    return list(dict.fromkeys([n for n in real if n not in virtual] + bases))


def consumer(states: dict, virtual: dict[str, Virtual], current: dict,
             real: Callable[[str, torch.Tensor], None], max_floats: int = 1 << 26) -> Callable[[str, torch.Tensor], None]:
    """The hook's callback: a real layer's output goes to ``real`` (if that layer is mined) and, encoded, to each
    mined SAE on it."""
    feeds: dict[str, list[str]] = {}
    for name, v in virtual.items():
        if name in states:
            feeds.setdefault(v.base.name, []).append(name)

    def consume(name: str, out: torch.Tensor) -> None:
        if name in states:
            real(name, out)
        for target in feeds.get(name, ()):
            v = virtual[target]
            maps = v.base.canonical(out).detach()  # [B, d, h, w]
            index = current["index"]
            per = max(1, max_floats // (v.sae.width * maps.shape[2] * maps.shape[3]))
            for i in range(0, maps.shape[0], per):
                states[target].update(index[i:i + per], feature_maps(maps[i:i + per], v.sae))  # [b, F, h, w]

    return consume


def write_links(group, v: Virtual, store_path: str | os.PathLike) -> None:
    """The virtual layer's ``sae/`` datasets and attributes (docs/store.md): per feature the neurons with the
    largest |decoder weight|, per neuron the features that use it most, and where the weights are."""
    w = v.sae.w_dec.float().cpu()  # [F, d]
    n = min(LINKS, w.shape[1])
    top = w.abs().topk(n, dim=1).indices  # [F, n]
    store.put(group, "sae/neurons", top.numpy().astype(np.int64))
    store.put(group, "sae/neuron_weights", w.gather(1, top).numpy().astype(np.float32))
    m = min(LINKS, w.shape[0])
    back = w.t().abs().topk(m, dim=1).indices  # [d, m]
    store.put(group, "sae/features", back.numpy().astype(np.int64))
    store.put(group, "sae/feature_weights", w.t().gather(1, back).numpy().astype(np.float32))
    group.attrs["base_layer"] = v.base.name
    group.attrs["sae_k"] = int(v.sae.k)
    group.attrs["sae_file"] = str(os.path.relpath(store.sae_path(store_path, str(v.meta["model_name"]),
                                                                 str(v.meta["virtual_layer"])),
                                                  os.path.dirname(os.path.abspath(store_path))))
    group.attrs["sae_metrics"] = json.dumps(v.meta.get("metrics", {}), sort_keys=True)
    group.attrs["sae_config"] = json.dumps(v.meta.get("config", {}), sort_keys=True)
