"""Why SAE features of the shipped Concept World CLIP are rarely multimodal (docs/sae.md, "Fidelity"): how much the
pictogram and the word of a concept share at a layer, what polysemantic units reach by chance, and TopK SAEs on the
image embedding (the attention pool's output, where the two views are most aligned) beside its 128 dimensions.

    python bench/sae_views.py --device cpu                                   # geometry and chance, two layers
    python bench/sae_views.py --device cpu --sae 4x:8:1 --sae 4x:8:5 --sae 1x:16:1  # + SAEs WIDTH:K:MATRYOSHKA

Per layer: the per-image score (spatial max for visual.layer4.0, the vector itself for the embedding) of the held-out
Concept World images of `atlas.evaluate`; per concept the mean score of its pictograms and of its words, each centred
on its view's mean; their cosine ("shared") against the cosine with other concepts.  Then the multimodal count of
`atlas.evaluate.neurons_from_scores` (held-out) beside `atlas.sae.fidelity.chance_multimodal`.  SAEs are trained
with `atlas.sae.train.fit` on the embeddings of the store's default images (Concept World, 4,096 of seed 1)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from atlas.config import SaeConfig
from atlas.data import open_source
from atlas.evaluate import concept_test_images, layer_scores, neurons_from_scores
from atlas.kernels.sae import dense_code, encode
from atlas.mining.batches import batches
from atlas.models import load_model
from atlas.sae.fidelity import chance_multimodal, concepts_per_unit
from atlas.sae.train import fit, metrics


def shared(scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray) -> tuple[float, float]:
    """(mean cosine of a concept's centred pictogram mean and word mean, mean cosine across different concepts)."""
    w = torch.from_numpy(is_word)
    c = torch.from_numpy(concept)
    n = int(c.max()) + 1
    means = [torch.stack([scores[(w == view) & (c == i)].mean(0) for i in range(n)]) for view in (False, True)]
    p, q = [(m - m.mean(0)) / (m - m.mean(0)).norm(dim=1, keepdim=True) for m in means]
    cos = p @ q.t()  # [concepts, concepts]
    return float(cos.diag().mean()), float((cos.sum() - cos.diag().sum()) / (n * (n - 1)))


def line(name: str, scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray) -> str:
    r = neurons_from_scores(name, scores, concept, is_word)
    poly = concepts_per_unit(scores, concept, is_word)
    live = poly[poly > 0]
    return (f"{name} ({scores.shape[1]} units): multimodal held-out {sum(r.multimodal_heldout)}/41, in-sample "
            f"{sum(r.multimodal)}/41, chance {chance_multimodal(name, scores, concept, is_word):.1f}/41; "
            f"{len(live)} detect a concept, {live.mean() if len(live) else 0:.2f} concepts each, "
            f"{(live == 1).mean() if len(live) else 0:.0%} exactly one")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sae", action="append", default=[], help="WIDTH:K:MATRYOSHKA, e.g. 4x:8:5 (repeatable)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 8 test images per concept and view, one SAE (1x:8:2) of 20 steps on 512 images")
    a = ap.parse_args()
    if a.quick:
        a.sae, a.steps = ["1x:8:2"], 20
    model = load_model("atlas:conceptclip", device=a.device)
    images = concept_test_images(model, per_concept=8 if a.quick else 40, size=model.image_size)
    concept, is_word = images.concept, images.is_word
    with torch.no_grad():
        emb = torch.cat([model.encode_image(images.pixels[i:i + 256].to(a.device)).float().cpu()
                         for i in range(0, len(images.pixels), 256)])  # [N, 128]
    layers = {"visual.layer4.0": layer_scores(model, images.pixels, ["visual.layer4.0"])["visual.layer4.0"],
              "embedding": emb}
    for name, s in layers.items():
        same, other = shared(s, concept, is_word)
        print(f"{name}: centred cosine of a concept's pictogram and word means {same:.3f} (other concepts {other:.3f})")
        print("  " + line(f"{name} units", s, concept, is_word))
    if not a.sae:
        return
    with torch.no_grad():
        train = torch.cat([model.encode_image(b.pixels).float().cpu()
                           for b in batches(model, open_source("default"), 0, 512 if a.quick else 4096, 64, 0)
                           if b.good])
    for spec in a.sae:
        width, k, nested = spec.split(":")
        cfg = SaeConfig("embedding", width=width, k=int(k), steps=a.steps, batch=256, matryoshka=int(nested))
        t = time.perf_counter()
        r = fit(train, cfg.features(train.shape[1]), cfg)
        vals, idx = encode(emb, r.sae)
        f = dense_code(vals.clamp_min(0), idx, r.sae.width)
        m = metrics(emb, r.sae)
        print(f"SAE {spec} ({a.steps} steps, {time.perf_counter() - t:.0f} s): test-image FVE {m['fve']:.3f}, "
              f"dead {m['dead_fraction']:.0%}")
        print("  " + line("features", f, concept, is_word))


if __name__ == "__main__":
    main()
