"""Feature-visualization kinds: seconds per unit of each kind, and what the default weights do (docs/featurevis.md).

    python bench/featurevis_kinds.py [--model default] [--data conceptworld:4096:1] [--units 16] [--steps 64] [--quick]

Mines the model's last two default layers on ``--data`` into a temporary store (or reads ``--store``), trains the
Concept World ``text`` facet on the lower one (`train_facet`, timed), then renders ``--units`` units of the last
layer on the fast path (`FastRenderer.render_goal`, the build's FeatureVisConfig but ``--steps``) for each kind and
weight, and prints per row: seconds per unit, the units' own objective on their final images, the facet's logit
(with bias; > 0: the facet's kind) and lucent's diversity term per unit (-(n-1): identical Gram matrices).

``--quick``: atlas:tiny@random:0 on conceptworld:96, 4 units, 2 steps: checks that the script runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="conceptworld:4096:1")
    ap.add_argument("--store", default=None, help="a store of --model with pooled activations (skips mining)")
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.model, a.data, a.units, a.steps = "atlas:tiny@random:0", "conceptworld:96:1", 4, 2
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from dataclasses import replace

    from atlas import store
    from atlas.config import BuildConfig, FacetConfig, MineConfig
    from atlas.data import open_source
    from atlas.featurevis import FastRenderer, Goal, train_facet
    from atlas.featurevis.objectives import diversity_term, facet_logits
    from atlas.featurevis.render import _Activations
    from atlas.mining import mine
    from atlas.models import load_model

    model = load_model(a.model, device="cpu")
    tmp = tempfile.TemporaryDirectory()
    path = Path(a.store) if a.store else Path(tmp.name) / "bench.h5"
    if not a.store:
        t = time.perf_counter()
        mine(model, open_source(a.data), path, MineConfig(layers=tuple(model.default_layers[-2:])))
        print(f"mine {a.data}: {time.perf_counter() - t:.1f} s")
    with store.Store(path) as st:
        names = [ld.name for ld in st.layers(model.name)]
    low, top = names[-2], names[-1]
    t = time.perf_counter()
    facet = train_facet(path, FacetConfig(name="text", layer=low, positive=r"^word:"))
    print(f"facet text on {low}: {time.perf_counter() - t:.2f} s, validation balanced accuracy "
          f"{100 * facet.val_accuracy:.1f}% ({facet.positives} positives, {facet.negatives} negatives)")
    with store.Store(path) as st:
        f = st.facets(model.name)["text"]
    w = torch.from_numpy(f.weights)
    cfg = replace(BuildConfig().featurevis, steps=a.steps)
    units = tuple(range(a.units))
    acts = _Activations(model, [top, low], outputs=[low])
    plain, faceted = FastRenderer(model, top), FastRenderer(model, top, extra_layers=[low])
    rows = [("channel", 0.0, plain, Goal("channel", top, units)),
            ("neuron", 0.0, plain, Goal("neuron", top, units))]
    rows += [("faceted", x, faceted, Goal("faceted", top, units, weight=x, facet_layer=low, facet=w))
             for x in (0.1, 0.3)]
    rows += [("diversity", x, plain, Goal("diversity", top, tuple(u for u in units for _ in range(4)), group=4,
                                          weight=x)) for x in (0.0, 3.0)]
    print(f"layer {top}, {a.units} units, {a.steps} steps, batch {cfg.batch}")
    print("kind       weight  s/unit  objective  facet logit  diversity")
    for kind, weight, renderer, goal in rows:
        t = time.perf_counter()
        r = renderer.render_goal(goal, replace(cfg, batch=max(cfg.batch, len(goal.units))))
        seconds = (time.perf_counter() - t) / a.units
        with torch.no_grad():
            acts.forward(torch.from_numpy(r.images).permute(0, 3, 1, 2).float() / 255)
        top_acts = acts(top)
        own = top_acts[torch.arange(len(goal.units)), torch.tensor(goal.units)].mean((1, 2)).mean().item()
        logit = (facet_logits(acts(low), w) + f.bias).mean().item()
        div = diversity_term(top_acts, 4).mean().item() if kind == "diversity" else float("nan")
        print(f"{kind:10s} {weight:6.2f} {seconds:7.2f} {own:10.3f} {logit:12.3f} {div:10.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
