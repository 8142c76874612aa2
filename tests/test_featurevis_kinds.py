"""Feature-visualization kinds (atlas/featurevis/objectives.py): the batched objectives equal torch-lucent's own
objectives on the same tensors (value and gradient; the lucent side is written here from lucent's API, not from
atlas's `Goal.lucent`), and the fast path renders every kind like the reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lucent.optvis import objectives as lo

from atlas.featurevis.objectives import Goal, direction_rows

LAYER, LOW = "L", "low"


def _acts(b=6, c=5, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    low = torch.randn(b, 3, 2 * h, 2 * w, generator=g, dtype=torch.float64).requires_grad_(True)
    return a, low


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def _same(atlas_goal, lucent_loss, tensors):
    """atlas's objective to maximize == -lucent's loss, and so are their gradients."""
    T = dict(zip((LAYER, LOW), tensors)).__getitem__
    ours, _ = atlas_goal.scores(T)
    theirs = lucent_loss(T)
    assert abs(ours.item() + theirs.item()) <= 1e-10 * max(1.0, abs(theirs.item()))
    for g1, g2 in zip(_grads(ours, tensors), _grads(-theirs, tensors)):
        if g1 is None or g2 is None:
            assert g1 is None and g2 is None or (g1 if g2 is None else g2).abs().max() == 0
            continue
        assert (g1 - g2).abs().max() <= 1e-10 * max(1.0, g2.abs().max().item())


@pytest.mark.parametrize("h,w", [(4, 4), (5, 5), (7, 7)])
def test_channel_and_neuron_equal_lucent(h, w):
    a, low = _acts(h=h, w=w)
    units = (0, 3, 1, 4, 2, 2)
    _same(Goal("channel", LAYER, units), lo.Objective.sum([lo.channel(LAYER, u, batch=i) for i, u in enumerate(units)]),
          [a, low])
    _same(Goal("neuron", LAYER, units), lo.Objective.sum([lo.neuron(LAYER, u, batch=i) for i, u in enumerate(units)]),
          [a, low])


def test_direction_equals_lucent():
    a, low = _acts()
    d = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    units = tuple(range(6))
    _same(Goal("direction", LAYER, units, directions=d),
          lo.Objective.sum([lo.direction(LAYER, d[i], batch=i) for i in range(6)]), [a, low])


@pytest.mark.parametrize("c,h", [(5, 4), (20, 2)])  # positions > channels (Gram form), < channels (P x P form)
def test_diversity_equals_lucent_per_group(c, h):
    a, low = _acts(c=c, h=h, w=h)
    units = (1, 1, 1, 4, 4, 4)

    def lucent_loss(T):  # lucent's diversity takes the whole batch: give it each unit's rows
        loss = lo.Objective.sum([lo.channel(LAYER, u, batch=i) for i, u in enumerate(units)])(T)
        for g in range(2):
            loss = loss - 0.7 * lo.diversity(LAYER)(lambda name: T(name)[3 * g:3 * g + 3])
        return loss

    _same(Goal("diversity", LAYER, units, group=3, weight=0.7), lucent_loss, [a, low])


def test_faceted_equals_lucent_channel_plus_weighted_lower_layer():
    a, low = _acts()
    w = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    units = (0, 1, 2, 3, 4, 0)
    lucent_loss = lo.Objective.sum([lo.channel(LAYER, u, batch=i) + (2.5 * 3) * lo.channel_weight(LOW, w, batch=i)
                                    for i, u in enumerate(units)])
    _same(Goal("faceted", LAYER, units, weight=2.5, facet_layer=LOW, facet=w), lucent_loss, [a, low])


@pytest.mark.parametrize("kind", ["channel", "neuron", "direction", "diversity", "faceted"])
def test_goal_lucent_form_is_the_batched_form(kind):
    a, low = _acts()
    extra = {"direction": {"directions": torch.randn(6, 5, dtype=torch.float64)},
             "diversity": {"group": 2, "weight": 0.3},
             "faceted": {"facet_layer": LOW, "facet": torch.randn(3, dtype=torch.float64), "weight": 1.5}}
    goal = Goal(kind, LAYER, (0, 0, 2, 2, 4, 4), **extra.get(kind, {}))
    _same(goal, goal.lucent(), [a, low])


def test_goal_and_directions_are_checked():
    with pytest.raises(ValueError, match="unknown kind"):
        Goal("channels", LAYER, (0,))
    with pytest.raises(ValueError, match="groups"):
        Goal("diversity", LAYER, (0, 0, 1), group=2)
    with pytest.raises(ValueError, match=r"has 5 values.*got shape \[4\]"):
        direction_rows(np.ones(4), 5)
    with pytest.raises(ValueError, match="not all zero"):
        direction_rows(np.zeros((2, 5)), 5)
    assert direction_rows(np.ones(5), 5).shape == (1, 5)


# --- rendering: the fast path against the reference loop, on the random tiny model ----------------------------------

TINY, TINY_LOW = "visual.layer4.0", "visual.layer3.0"


def _tiny_goals(model):
    g = torch.Generator().manual_seed(0)
    return {
        "neuron": Goal("neuron", TINY, (7, 71, 135, 199)),
        "direction": Goal("direction", TINY, (0, 1, 2, 3), directions=torch.randn(4, 512, generator=g)),
        "diversity": Goal("diversity", TINY, (7, 7, 71, 71), group=2, weight=10.0),
        "faceted": Goal("faceted", TINY, (7, 71, 135, 199), weight=5.0, facet_layer=TINY_LOW,
                        facet=torch.randn(model.layer(TINY_LOW).units, generator=g) / 10),
    }


@pytest.mark.parametrize("kind", ["neuron", "direction", "diversity", "faceted"])
def test_fast_path_follows_the_reference_for_every_kind(tiny_model, kind):
    from atlas.config import FeatureVisConfig
    from atlas.featurevis import FastOptions, FastRenderer, render_goal

    goal = _tiny_goals(tiny_model)[kind]
    cfg = FeatureVisConfig(batch=4, steps=12)
    ref = render_goal(tiny_model, goal, cfg)
    fast = FastRenderer(tiny_model, TINY, FastOptions(dtype="float32"), extra_layers=goal.layers[1:]).render_goal(
        goal, cfg)
    scale = np.abs(ref.history).max()
    # diversity: in float32 lucent's C x C Gram form loses digits where a unit's images have nearly equal Grams (its
    # gradient is 4e-4 off the float64 value on this model, atlas's P x P form 1e-5), and 12 Adam steps carry it on
    tol = 0.05 if kind == "diversity" else 0.02
    assert np.abs(fast.history - ref.history).max() < tol * scale
    assert np.abs(fast.objective - ref.objective).max() < tol * scale
    if kind in ("neuron", "direction"):  # diversity and facet terms trade some of the unit's own score for theirs
        assert (ref.objective > ref.history[0]).all()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_model.clip.modules()) == 0


def test_diversity_term_pushes_a_units_images_apart(tiny_model):
    from atlas.config import FeatureVisConfig
    from atlas.featurevis import FastOptions, FastRenderer
    from atlas.featurevis.objectives import diversity_term
    from atlas.featurevis.render import _Activations

    cfg = FeatureVisConfig(batch=4, steps=16)
    r = FastRenderer(tiny_model, TINY, FastOptions(dtype="float32"))
    plain = r.render_goal(Goal("diversity", TINY, (7, 7, 7, 7), group=4, weight=0.0), cfg)
    pushed = r.render_goal(Goal("diversity", TINY, (7, 7, 7, 7), group=4, weight=50.0), cfg)

    def div(images):
        acts = _Activations(tiny_model, [TINY])
        with torch.no_grad():
            acts.forward(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        return diversity_term(acts(TINY), 4).item()

    assert div(pushed.images) > div(plain.images)  # less similar Gram matrices


def test_renderer_checks_the_goal(tiny_model):
    from atlas.featurevis import FastRenderer, render_goal

    with pytest.raises(ValueError, match="no unit 512"):
        render_goal(tiny_model, Goal("neuron", TINY, (512,)))
    with pytest.raises(ValueError, match="must come before"):
        render_goal(tiny_model, Goal("faceted", TINY_LOW, (0,), facet_layer=TINY, facet=torch.ones(512)))
    with pytest.raises(ValueError, match="the goal needs"):
        FastRenderer(tiny_model, TINY).render_goal(_tiny_goals(tiny_model)["faceted"])


# --- the job, the store, facets, the CLI and the site ----------------------------------------------------------------

@pytest.fixture(scope="module")
def kinds_store(tiny_model, small_store, tmp_path_factory):
    """small_store plus a facet ('word': synthetic word images) and 4-step visualizations of units 0-3 of every
    kind (direction: units 5 and 9)."""
    import shutil

    from atlas.config import FacetConfig, FeatureVisConfig, KindConfig
    from atlas.featurevis import featurevis, train_facet

    path = tmp_path_factory.mktemp("kinds") / "kinds.h5"
    shutil.copy(small_store, path)
    facet = train_facet(path, FacetConfig(name="word", layer=TINY_LOW, positive="^word$"))
    cfg = FeatureVisConfig(steps=4, batch=8)
    for kind in (KindConfig("neuron"), KindConfig("diversity", images=2), KindConfig("faceted", name="word")):
        r = featurevis(tiny_model, path, TINY, units=range(4), config=cfg, kind=kind)
        assert (r.rendered, r.reused) == (4, 0)
    vectors = np.random.default_rng(0).normal(size=(2, 512))
    featurevis(tiny_model, path, TINY, units=[9, 5], config=cfg, kind=KindConfig("direction", name="rand"),
               directions=vectors)
    return path, facet, vectors


def test_facet_is_trained_and_stored(kinds_store):
    from atlas import store

    path, facet, _ = kinds_store
    assert facet.positives > 0 and facet.negatives > facet.positives
    assert facet.val_accuracy > 0.7  # synthetic words are easy to tell from shapes at layer3
    with store.Store(path) as st:
        f = st.facets("tiny")["word"]
        assert f.layer == TINY_LOW and f.weights.shape == (256,) and '"positive":"^word$"' in f.config
        pooled, labels = st.layer("tiny", TINY_LOW)["pooled"], st.image_column("label")
    logits = pooled @ f.weights + f.bias
    assert (logits[labels == "word"] > 0).mean() > 0.7 and (logits[labels != "word"] < 0).mean() > 0.7


def test_store_reads_every_kind_and_old_channel_groups(kinds_store, tiny_model):
    from atlas import store
    from atlas.config import FeatureVisConfig, KindConfig
    from atlas.featurevis import featurevis

    path, _, vectors = kinds_store
    with store.Store(path) as st:
        ld = st.layer("tiny", TINY)
        assert ld.visualization_kinds() == [("channel", ""), ("neuron", ""), ("direction", "rand"),
                                            ("diversity", ""), ("faceted", "word")]
        ch = ld.visualizations()  # the fixture's channel group, written as before kinds existed
        assert ch.kind == "channel" and ch.kind_config == "" and ch.done[:8].all()
        div = ld.visualizations("diversity")
        assert div.images.shape == (512, 2, 64, 64, 3) and div.done[:4].all() and not div.done[4:].any()
        assert not (div.images[:4, 0] == div.images[:4, 1]).all()
        d = ld.visualizations("direction", "rand")
        assert d.done[[5, 9]].all() and d.done.sum() == 2
        assert np.allclose(d.vectors[[9, 5]], vectors) and np.isnan(d.vectors[0]).all()
        assert ld.visualizations("faceted", "text") is None
    # the same direction again is reused; another vector for unit 9 is rendered again
    cfg, kind = FeatureVisConfig(steps=4, batch=8), KindConfig("direction", name="rand")
    assert featurevis(tiny_model, path, TINY, units=[9], config=cfg, kind=kind, directions=vectors[0]).reused == 1
    r = featurevis(tiny_model, path, TINY, units=[9], config=cfg, kind=kind, directions=vectors[1])
    assert (r.rendered, r.reused) == (1, 0)
    featurevis(tiny_model, path, TINY, units=[9], config=cfg, kind=kind, directions=vectors[0])  # as it was


def test_site_shows_a_tab_per_kind_and_none_without_kinds(kinds_store, small_store, tmp_path):
    from atlas.site import build_site

    path, _, _ = kinds_store
    build_site([path], tmp_path / "site")
    page = (tmp_path / "site" / "tiny" / TINY / "3.html").read_text()
    for title, src in (("channel", "fv/3.png"), ("neuron", "fv-neuron/3.png"),
                       ("diversity", "fv-diversity/3-1.png"), ("faceted: word", "fv-faceted-word/3.png")):
        assert f'">{title}</label>' in page and f'src="{src}"' in page
        assert (tmp_path / "site" / "tiny" / TINY / src).is_file()
    assert "direction" not in page.split('class="stats"')[0].replace("direction objective", "")
    page9 = (tmp_path / "site" / "tiny" / TINY / "9.html").read_text()
    assert '">direction: rand</label>' in page9 and 'src="fv-direction-rand/9.png"' in page9
    assert '">channel</label>' not in page9  # unit 9 has no channel visualization
    page100 = (tmp_path / "site" / "tiny" / TINY / "100.html").read_text()
    assert "fv-tab" not in page100 and "no feature visualization rendered" in page100
    build_site([small_store], tmp_path / "plain")  # a store of channel visualizations only: no tabs
    plain = (tmp_path / "plain" / "tiny" / TINY / "3.html").read_text()
    assert "fv-tab" not in plain and 'src="fv/3.png"' in plain


@pytest.mark.parametrize("args, message", [
    (["--kind", "channels"], "--kind: unknown kind 'channels'"),
    (["--kind", "faceted", "--facet", "nosuch"], "--facet nosuch: the store has no such facet"),
    (["--kind", "faceted"], "--facet NAME goes with --kind faceted"),
    (["--kind", "direction", "--direction-file", "{tmp}/short.npy"], "a direction of this layer has 512 values"),
    (["--kind", "direction"], "--kind direction needs it"),
    (["--kind", "neuron", "--units", "512"], "--units: the layer has 512 units"),
    (["--kind", "direction", "--direction-file", "{tmp}/short.npy", "--units", "1,2"], "has 512 values"),
    (["--kind", "diversity", "--images", "1"], "diversity renders >= 2 images per unit"),
    (["--kind", "neuron", "--weight", "2"], "--weight weighs the diversity or facet term"),
    (["--images", "3"], "--images goes with --kind diversity, not --kind channel"),
])
def test_featurevis_cli_bad_input_gives_a_clear_error(small_store, tmp_path, args, message):
    from click.testing import CliRunner

    from atlas.cli import main

    np.save(tmp_path / "short.npy", np.ones(10, np.float32))
    r = CliRunner().invoke(main, ["featurevis", "--store", str(small_store), "--layer", TINY, "--steps", "1",
                                  *[a.format(tmp=tmp_path) for a in args]])
    assert r.exit_code == 1 and message in r.output, r.output
    assert "Traceback" not in r.output


def test_facet_and_featurevis_cli(small_store, tmp_path):
    import shutil

    from click.testing import CliRunner

    from atlas import store
    from atlas.cli import main

    path = tmp_path / "s.h5"
    shutil.copy(small_store, path)
    r = CliRunner().invoke(main, ["facet", "train", "--store", str(path), "--layer", TINY_LOW, "--name", "word",
                                  "--positive", "^word$"])
    assert r.exit_code == 0 and "facet word on visual.layer3.0" in r.output, r.output
    bad = CliRunner().invoke(main, ["facet", "train", "--store", str(path), "--layer", TINY_LOW, "--name", "x",
                                    "--positive", "^nothing$"])
    assert bad.exit_code == 1 and "0 positives" in bad.output
    r = CliRunner().invoke(main, ["featurevis", "--store", str(path), "--layer", TINY, "--units", "0-1",
                                  "--steps", "2", "--batch", "2", "--kind", "faceted", "--facet", "word",
                                  "--device", "cpu"])
    assert r.exit_code == 0 and "rendered 2 neurons" in r.output, r.output
    with store.Store(path) as st:
        assert st.layer("tiny", TINY).visualizations("faceted", "word").done[:2].all()
    info = CliRunner().invoke(main, ["info", str(path)])
    assert "feature vis 8/512, faceted:word 2" in info.output and "facet tiny/word: on visual.layer3.0" in info.output


def test_conceptworld_facets_are_trained_once(tiny_model, tmp_path):
    from atlas import store
    from atlas.config import MineConfig
    from atlas.data import open_source
    from atlas.featurevis.facets import conceptworld_facets
    from atlas.mining import mine

    path = tmp_path / "cw.h5"
    mine(tiny_model, open_source("conceptworld:160:1"), path, MineConfig(layers=(TINY_LOW, TINY), top_k=4,
                                                                          batch_size=32))
    pairs = conceptworld_facets(path, [TINY], [TINY_LOW, TINY])
    assert pairs == [(TINY, "text"), (TINY, "pictogram"), (TINY, "scene")]
    with store.Store(path) as st:
        facets = st.facets("tiny")
    assert sorted(facets) == ["pictogram", "scene", "text"] and all(f.layer == TINY_LOW for f in facets.values())
    before = path.stat().st_mtime_ns
    assert conceptworld_facets(path, [TINY], [TINY_LOW, TINY]) == pairs
    assert path.stat().st_mtime_ns == before  # the same configs: nothing trained or written again
    with pytest.raises(store.StoreError, match="no mined layer before it"):
        conceptworld_facets(path, [TINY_LOW], [TINY_LOW, TINY])


def test_a_retrained_facet_renders_again(kinds_store, tiny_model, tmp_path):
    import shutil

    from atlas.config import FacetConfig, FeatureVisConfig, KindConfig
    from atlas.featurevis import featurevis, train_facet

    path = tmp_path / "copy.h5"
    shutil.copy(kinds_store[0], path)
    cfg, kind = FeatureVisConfig(steps=4, batch=8), KindConfig("faceted", name="word")
    assert featurevis(tiny_model, path, TINY, units=range(2), config=cfg, kind=kind).reused == 2
    train_facet(path, FacetConfig(name="word", layer=TINY_LOW, positive="^word$", l2=1.0))
    r = featurevis(tiny_model, path, TINY, units=range(2), config=cfg, kind=kind)
    assert (r.rendered, r.reused) == (2, 0)


def test_cut_tower_with_a_facet_layer_returns_its_output(tiny_model):
    from atlas.featurevis.fast import cut_tower
    from atlas.featurevis.render import _Activations

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    acts = _Activations(tiny_model, [TINY, TINY_LOW], outputs=[TINY_LOW])
    with torch.no_grad():
        acts.forward(x)
        top, low = cut_tower(tiny_model, tiny_model.layer(TINY), True, [tiny_model.layer(TINY_LOW)])(
            tiny_model.normalize(x))
    assert (top - acts(TINY)).abs().max() <= 1e-4 * acts(TINY).abs().max()
    assert torch.equal(low, acts(TINY_LOW)) or (low - acts(TINY_LOW)).abs().max() <= 1e-5 * acts(TINY_LOW).abs().max()
    assert (low >= 0).all() and (acts(TINY) < 0).any()  # the facet layer after its ReLU, the target before


@pytest.mark.slow
def test_build_with_facets_trains_them_and_renders_faceted_tabs(tmp_path):
    """`atlas build --facets` on Concept World (tiny model, 1 step: about 20 s on 2 cores)."""
    from atlas import store
    from atlas.build import build
    from atlas.config import AnalysesConfig, BuildConfig, FeatureVisConfig, MineConfig

    cfg = BuildConfig(model="atlas:tiny@random:0", data="conceptworld:96:1",
                      mine=MineConfig(layers=(TINY_LOW, TINY), top_k=4), featurevis=FeatureVisConfig(steps=1),
                      analyses=AnalysesConfig(probe=False, attacks=False, audit=False), verify=None, facets=True)
    r = build(cfg, tmp_path / "out", device="cpu")
    assert "facets" in r.seconds
    with store.Store(r.store) as st:
        assert sorted(st.facets("tiny")) == ["pictogram", "scene", "text"]
        ld = st.layer("tiny", TINY)
        assert [k for k in ld.visualization_kinds() if k[0] == "faceted"] == [
            ("faceted", "pictogram"), ("faceted", "scene"), ("faceted", "text")]
        assert all(ld.visualizations("faceted", n, images=False).done.all() for n in ("pictogram", "scene", "text"))
    page = (r.site / "tiny" / TINY / "7.html").read_text()
    assert all(f'">{t}</label>' in page for t in ("channel", "faceted: pictogram", "faceted: scene", "faceted: text"))
