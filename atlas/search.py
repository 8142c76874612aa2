"""`atlas search STORE "query"` and `atlas.open(path).search("query")`: units ranked by how well the query matches
what they are called (their labels and top words: `atlas.searchindex`) and, where the model is given and the
layer lives in the joint embedding space, by the text tower's similarity of the query to each unit's direction.

Which layers have a text-tower score (`embedding_directions`): those whose units reach the image embedding through
a fixed linear map, so that each unit has one direction in the space the text tower writes to:

- ResNet CLIPs (a ModifiedResNet with attention pooling): the last block of ``visual.layer4``, the pooling's input.
  The pooled embedding is c_proj(sum_t a_t v_proj(x_t + pos_t)) with attention weights a_t summing to one, so unit
  j writes column j of c_proj.W @ v_proj.W (`atlas.probes.zeroshot.neuron_directions`; exact up to the attention
  weights, the same for every unit).
- ViT CLIPs: the residual stream (``tokens``) of the last transformer block, which ln_post and proj map to the
  embedding: unit j writes row j of proj scaled by ln_post's weight (exact up to ln_post's centring and scale,
  one number per image).

Every other layer (earlier blocks, MLP hidden units, non-CLIP towers) is ranked by its labels alone, and the result
says so.  The query's direction is the mean over `PROMPTS` of its normalized text embeddings minus the mean of
reference nouns (Concept World's 41 concepts), as in `text_as_neurons`: without that every text shares one large
common direction and the same units come first for every query.  A unit's tower score is the cosine of that
direction with the unit's.

Score = label match (0..1, `atlas.searchindex.query_index`) + tower cosine (0 where there is none).
Torch is imported only when a model is given; without it this module reads the store alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import store
from .searchindex import SearchError, build_index, check_query, query_index, unit_texts

if TYPE_CHECKING:
    from .models import LoadedModel


@dataclass(frozen=True)
class SearchHit:
    id: str  # model/layer/unit
    layer: str
    unit: int
    score: float  # label + (tower or 0)
    label: float  # match with the unit's labels and top words, 0..1
    tower: float | None  # text-tower cosine, None where the layer has no direction in the embedding
    text: str  # what the unit is called ("" when nothing is known)
    label_score: float | None  # the combined score of the unit's best label (labels/score), None without labels


@dataclass
class SearchResult:
    query: str
    hits: list[SearchHit]
    tower_layers: list[str]  # layers ranked by the text tower too
    notes: list[str] = field(default_factory=list)  # what is missing and how to add it


def tower_layer(model: "LoadedModel") -> str | None:
    """The layer of ``model`` whose units have a direction in the joint embedding space (module doc), or None."""
    visual = model.clip.visual
    if getattr(visual, "attnpool", None) is not None and hasattr(visual, "layer4"):
        return f"visual.layer4.{len(visual.layer4) - 1}"
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None and getattr(visual, "proj", None) is not None and hasattr(visual, "ln_post"):
        return f"visual.transformer.resblocks.{len(blocks) - 1}"
    return None


def embedding_directions(model: "LoadedModel", layer: str) -> np.ndarray | None:
    """[units, D] unit-norm direction of each unit of ``layer`` in the image embedding, None if it has none."""
    import torch

    if layer != tower_layer(model):
        return None
    visual = model.clip.visual
    with torch.no_grad():
        if getattr(visual, "attnpool", None) is not None:
            from .probes.zeroshot import neuron_directions

            M = neuron_directions(model).t()  # [units, D]
        else:
            M = (visual.ln_post.weight[:, None] * visual.proj).float()  # [width, D]
        M = M / M.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return M.detach().cpu().numpy().astype(np.float64)


def unit_directions(model: "LoadedModel", store_path: str | os.PathLike, layer: str) -> np.ndarray | None:
    """`embedding_directions` of a layer; for an SAE's virtual layer on the tower layer, each feature's decoder row
    carried through the neurons' directions (sum_u w_dec[f, u] * direction[u]), normalized; None where none."""
    from .names import split_sae_layer

    parts = split_sae_layer(layer)
    if parts is None:
        return embedding_directions(model, layer)
    base = embedding_directions(model, parts[0])
    if base is None:
        return None
    from .sae.run import load_sae

    sae, _ = load_sae(store_path, model.name, layer, model.weights_sha256)
    m = sae.w_dec.double().numpy() @ base  # [F, D]
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def query_direction(model: "LoadedModel", query: str) -> np.ndarray:
    """[D] unit-norm text direction of ``query`` (module doc)."""
    from .data.conceptworld import CONCEPT_NAMES
    from .probes.zeroshot import zero_shot_head

    head = zero_shot_head(model, [query, *CONCEPT_NAMES]).cpu().numpy().astype(np.float64)  # [1 + 41, D]
    t = head[0] - head[1:].mean(0)
    return t / max(np.linalg.norm(t), 1e-12)


def search(store_path: str | os.PathLike, query: str, layer: str | None = None, top: int = 10,
           model: "LoadedModel | None" = None) -> SearchResult:
    """The ``top`` units of the store (or of ``layer``) best matching ``query``, best first (module doc)."""
    query = check_query(query)
    if top < 1:
        raise SearchError(f"--top must be at least 1, got {top}")
    hits: list[SearchHit] = []
    notes: list[str] = []
    towered: list[str] = []
    with store.Store(store_path) as st:
        models = st.models()
        if not models:
            raise SearchError(f"store {store_path} holds no mined layers; run `atlas mine` on it first")
        name = models[0]
        layers = [ld.name for ld in st.layers(name)]
        if layer is not None and layer not in layers:
            raise SearchError(f"store {store_path} has no layer {layer!r}; pass --layer one of: {', '.join(layers)}")
        if model is not None and model.name != name:
            raise SearchError(f"store {store_path} holds model {name}, not {model.name}; pass --model "
                              f"{st.meta.get('model_spec')}")
        for lname in [layer] if layer else layers:
            texts = unit_texts(st, name, lname)
            notes += texts.missing
            match = query_index(build_index(texts), query)  # [U]
            tower = None
            dirs = unit_directions(model, store_path, lname) if model is not None else None
            if dirs is not None:
                tower = dirs @ query_direction(model, query)  # [U]
                towered.append(lname)
            total = match + (tower if tower is not None else 0.0)
            keep = np.nonzero((match > 0) | (tower is not None))[0]
            order = keep[np.argsort(-total[keep], kind="stable")][:top]
            for u in order:
                labs = texts.labels[u]
                hits.append(SearchHit(f"{name}/{lname}/{u}", lname, int(u), float(total[u]), float(match[u]),
                                      None if tower is None else float(tower[u]), texts.text(int(u)),
                                      labs[0][1] if labs else None))
    if model is None:
        notes.append("ranked by labels and words only; pass --model to add the text tower's similarity")
    elif not towered:
        notes.append(f"no searched layer lives in the joint embedding space (only {tower_layer(model) or 'none'} "
                     f"of {model.name} does); ranked by labels and words only")
    hits.sort(key=lambda h: -h.score)
    return SearchResult(query, hits[:top], towered, notes)


def describe(result: SearchResult) -> dict[str, Any]:
    """The result as plain data (for JSON)."""
    return {"query": result.query, "tower_layers": result.tower_layers, "notes": result.notes,
            "hits": [h.__dict__ for h in result.hits]}
