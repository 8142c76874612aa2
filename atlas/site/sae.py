"""Links between neurons and SAE features on the site (docs/sae.md): a feature's page lists the neurons its decoder
row weighs most, a neuron's page the features of each SAE on its layer that use it most (largest |decoder weight|),
both read from the virtual layer's ``sae/`` datasets (atlas.mining.virtual.write_links).  No torch."""

from __future__ import annotations

from typing import Any

from ..names import unit_id
from ..store import LayerData, Store


def sae_links(st: Store, ld: LayerData) -> dict[int, list[dict[str, Any]]]:
    """unit -> [{"title", "links": [{"id", "href" (relative to the site's root, None where not mined), "weight"}]}]."""
    model, names = ld.model, {x.name: x for x in st.layers(ld.model)}
    out: dict[int, list[dict[str, Any]]] = {}
    if ld.kind == "sae" and ld.has("sae/neurons"):
        base = str(ld.group.attrs.get("base_layer", ld.name.rsplit("/", 1)[0]))
        idx, wts = ld["sae/neurons"], ld["sae/neuron_weights"]
        for u in range(ld.units):
            out[u] = [{"title": f"Neurons of {base} this feature's decoder row weighs most", "links": [
                {"id": unit_id(model, base, int(n)), "weight": float(w),
                 "href": f"{unit_id(model, base, int(n))}.html" if base in names else None}
                for n, w in zip(idx[u], wts[u])]}]
        return out
    for name, other in names.items():
        if other.kind != "sae" or str(other.group.attrs.get("base_layer", "")) != ld.name or not other.has("sae/features"):
            continue
        idx, wts = other["sae/features"], other["sae/feature_weights"]
        for u in range(min(ld.units, idx.shape[0])):
            out.setdefault(u, []).append({"title": f"Features of {name} that use this neuron most", "links": [
                {"id": unit_id(model, name, int(f)), "weight": float(w), "href": f"{unit_id(model, name, int(f))}.html"}
                for f, w in zip(idx[u], wts[u])]})
    return out
