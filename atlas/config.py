"""Frozen configurations of every atlas step.

Each step (mine, featurevis, site, build) takes one frozen dataclass; its JSON form is written into the
attributes of every artifact the step produces, so a store says exactly how it was made.  Options that
change *how fast* a step runs but not *what* it computes (device, worker count, checkpoint interval)
are keyword arguments of the step functions, not config fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

RANK_BY = ("max", "mean")
PRECISIONS = ("auto", "float32", "bfloat16")
PIXELS = ("exact", "draft", "approx")
RESIZES = ("auto", "cpu", "device")  # where the exact resize runs (a speed option of `atlas.mining.mine`)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class MineConfig:
    """What `atlas mine` computes for each layer.

    layers: canonical layer names (`named_modules()` paths); empty means the model's default layers.
    top_k: dataset examples kept per neuron.
    batch_size: images per forward pass (None: what fits the machine, `atlas.mining.machine`: 64 on a CPU, up to
        256 on a GPU by its memory; resolved before the config is stored).  Part of the identity of a run: batch
        composition can change floating-point results in the last bit, so a resumed run must use the same batches.
    rank_by: per-image score of a neuron: "max" or "mean" of its spatial (or token) map.
    map_size: the spatial map of each top example is average-pooled to at most map_size x map_size.
    hist_bins: bins of the per-neuron histogram of scores (even; half for negative, half for positive).
    keep_pooled: store the [images, units] matrix of spatial means (inputs of probes).
    max_images: mine only the first max_images images of the source (None: all).
    thumb_size: side of the stored thumbnails of top examples (the model's centre crop, made at this size).
    precision: the image tower's arithmetic: "float32", "bfloat16" (autocast) or "auto" (bfloat16 autocast on a
        CUDA GPU that supports it, float32 elsewhere).  `atlas.mining` resolves "auto" before it stores the
        config, so a store says which one was used.
    pixels: what the model is shown of an image file: "exact" (the default: the file fully decoded, then the
        model's own validation transform -- open_clip's Resize + CenterCrop with PIL's bicubic, byte for byte,
        whether the resize runs in the decoding processes or on the device: atlas.data.pixels), "draft" (JPEGs
        shrunk 1/2-1/8 inside libjpeg before that resize: faster decoding of large JPEGs, other pixels) or
        "approx" (torch's antialiased bicubic on the device in float32: less CPU work, pixels within about 1/255).
        The agreement of "draft" and "approx" with "exact" is measured in docs/store.md.  Generated images (Concept
        World, synthetic) are drawn as PIL images and always take the exact path.
    """

    layers: tuple[str, ...] = ()
    top_k: int = 16
    batch_size: int | None = None
    rank_by: str = "max"
    map_size: int = 8
    hist_bins: int = 64
    keep_pooled: bool = True
    max_images: int | None = None
    thumb_size: int = 96
    precision: str = "auto"
    pixels: str = "exact"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        _check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.rank_by in RANK_BY, f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")
        _check(1 <= self.map_size <= 64, f"map_size must be in 1..64, got {self.map_size}")
        _check(self.hist_bins >= 2 and self.hist_bins % 2 == 0,
               f"hist_bins must be an even number >= 2, got {self.hist_bins}")
        _check(self.max_images is None or self.max_images >= 1,
               f"max_images must be >= 1 or None, got {self.max_images}")
        _check(16 <= self.thumb_size <= 512, f"thumb_size must be in 16..512, got {self.thumb_size}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.pixels in PIXELS, f"pixels must be one of {PIXELS}, got {self.pixels!r}")


@dataclass(frozen=True)
class FeatureVisConfig:
    """How channel feature visualizations are rendered (see atlas.featurevis.render).

    steps: optimizer steps; lr: Adam learning rate; size: side of the parameterized image;
    batch: neurons rendered together (one neuron per batch element); seed: initial noise seed;
    decorrelate/fft: lucent's colour-decorrelated Fourier parameterization;
    jitter, scales, rotate_degrees: per-image random transforms applied at every step.
    """

    steps: int = 128
    lr: float = 0.05
    size: int = 64
    batch: int = 64
    seed: int = 0
    fft: bool = True
    decorrelate: bool = True
    jitter: int = 4
    scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
    rotate_degrees: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(8 <= self.size <= 1024, f"size must be in 8..1024, got {self.size}")
        _check(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        _check(self.jitter >= 0, f"jitter must be >= 0, got {self.jitter}")
        _check(len(self.scales) >= 1 and all(s > 0 for s in self.scales), "scales must be positive")


FEATUREVIS_KINDS = ("channel", "neuron", "direction", "diversity", "faceted")  # atlas.featurevis.objectives.KINDS
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a facet's or a direction set's name (an HDF5 group, a URL part)


@dataclass(frozen=True)
class KindConfig:
    """Which feature visualization `atlas featurevis --kind` renders besides how (FeatureVisConfig); docs/featurevis.md.

    kind: channel, neuron, direction, diversity or faceted;
    name: the facet (faceted; trained by `atlas facet train`) or the direction set (direction; default: the
        direction file's name);
    images: images per unit (diversity); diversity_weight: the weight of lucent's diversity term;
    facet_weight: the weight of the facet's logit at its layer (faceted).
    """

    kind: str = "channel"
    name: str = ""
    images: int = 4
    diversity_weight: float = 3.0  # docs/featurevis.md: measured on the shipped model
    facet_weight: float = 0.1

    def __post_init__(self) -> None:
        import re

        _check(self.kind in FEATUREVIS_KINDS, f"--kind: unknown kind {self.kind!r}; use one of "
               f"{', '.join(FEATUREVIS_KINDS)}")
        named = self.kind in ("faceted", "direction")
        _check(not named or re.fullmatch(NAME_PATTERN, self.name) is not None,
               f"--kind {self.kind} needs a name (--facet NAME or the direction set's --name) of letters, digits, "
               f"'_', '.' and '-', got {self.name!r}")
        _check(named or not self.name, f"--kind {self.kind} takes no name (got {self.name!r})")
        _check(self.images >= 2, f"diversity renders >= 2 images per unit, got {self.images}")
        _check(self.diversity_weight >= 0 and self.facet_weight >= 0, "weights must be >= 0")


@dataclass(frozen=True)
class FacetConfig:
    """`atlas facet train`: a facet is a logistic-regression probe on a layer's pooled activations (the store's
    ``pooled``) separating the images whose label (or caption) matches ``positive`` from the others.

    name: the facet's name in the store; layer: the (lower) layer it is trained on; positive: regex searched in
    each image's ``field`` ("label" or "caption"); negative: regex for the negatives ("": every other image);
    l2: ridge penalty on standardized features; steps: L-BFGS iterations; val_fraction: images held out; seed.
    """

    name: str
    layer: str
    positive: str
    negative: str = ""
    field: str = "label"
    l2: float = 1e-2
    steps: int = 100
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        import re

        _check(re.fullmatch(NAME_PATTERN, self.name) is not None,
               f"facet name {self.name!r}: use letters, digits, '_', '.' and '-'")
        _check(self.field in ("label", "caption"), f"field must be 'label' or 'caption', got {self.field!r}")
        for what, pattern in (("positive", self.positive), ("negative", self.negative)):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"--{what} {pattern!r} is not a regular expression ({e})") from e
        _check(bool(self.positive), "--positive: give a regex that matches the facet's images")
        _check(self.l2 >= 0 and self.steps >= 1, "l2 must be >= 0 and steps >= 1")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class VerifyConfig:
    """`atlas verify` (atlas.verify): units checked per layer, random images checked besides the units' top-k
    examples, the sample's seed, images per reference forward."""

    units: int = 64
    images: int = 64
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        _check(self.units >= 1, f"units must be >= 1, got {self.units}")
        _check(self.images >= 0, f"images must be >= 0, got {self.images}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class SiteConfig:
    """How the static site is rendered.  examples: dataset examples shown per neuron page."""

    examples: int = 16
    title: str = "atlas"

    def __post_init__(self) -> None:
        _check(self.examples >= 1, f"examples must be >= 1, got {self.examples}")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `atlas build` does, in one place."""

    model: str = "default"
    data: str = "default"
    mine: MineConfig = field(default_factory=MineConfig)
    # fewer steps than `atlas featurevis` uses by default, so that the default build of every unit of the
    # last layer stays within minutes on a laptop CPU; rerun `atlas featurevis --steps 512` for finer images
    featurevis: FeatureVisConfig = field(default_factory=lambda: FeatureVisConfig(steps=64))
    site: SiteConfig = field(default_factory=SiteConfig)
    featurevis_layers: tuple[str, ...] | None = None  # None: the last mined layer
    # Concept World's facets (text, pictogram, scene) trained on the layer before each visualized one, and the
    # faceted visualizations of the visualized layers: off by default (docs/featurevis.md: it triples the
    # feature-visualization time of a CPU build)
    facets: bool = False
    analyses: AnalysesConfig = field(default_factory=lambda: AnalysesConfig())
    # the check at the end of a build: a small `atlas verify` of every mined layer (None: none)
    verify: VerifyConfig | None = field(default_factory=lambda: VerifyConfig(units=32, images=32))

    def __post_init__(self) -> None:
        if self.featurevis_layers is not None:
            object.__setattr__(self, "featurevis_layers", tuple(self.featurevis_layers))


EXPORT_FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class ExportConfig:
    """What `atlas export` writes (atlas.export; the layout: docs/store.md, "Export").

    format: "jsonl" (gzip-compressed JSON lines in Neuronpedia's layout) or "parquet" (the same records; needs pyarrow).
    layers: layers to export (canonical names; empty: every mined layer of the store).
    batch_size: units per batch file; batch i of features/ and of activations/ holds the same units.
    examples: top examples written per unit (None: every one the store keeps).
    maps: also write each example's stored heatmap ([mh, mw], at most 8 x 8), not only its peak and grid.
    """

    format: str = "jsonl"
    layers: tuple[str, ...] = ()
    batch_size: int = 1000
    examples: int | None = None
    maps: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check(self.format in EXPORT_FORMATS,
               f"--format {self.format!r} is not an export format; use one of {', '.join(EXPORT_FORMATS)}")
        _check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _check(self.examples is None or self.examples >= 1, f"--examples must be >= 1, got {self.examples}")


@dataclass(frozen=True)
class LabelConfig:
    """What `atlas label` computes for each layer (atlas/labels.py).

    templates: prompts whose normalized text embeddings are averaged per vocabulary entry ("{}" is the entry).
    top: labels kept per unit, best first.
    word_weight: weight of the rendered-word evidence in the combined score (0: image-text matching alone).
    scale: the logit scale of the match evidence's P, the softmax over the vocabulary of scale x image-text cosine
        (100: CLIP's; atlas/labels.py says why).
    words_report: the /attacks/<name> word-sensitivity report whose responses are the rendered-word evidence
        (used only when it covers the layer and holds `responses`).
    bootstrap: resamples of the probing images for the AUPRC confidence interval; seed: their seed.
    vocab: where the vocabulary came from ("default": common English words plus the data's class or concept
        names; else the vocabulary file's path).
    probe_data: the probing images: None for the store's own mined images, else a data spec as `atlas mine --data`
        takes (e.g. conceptworld:16384:2: more images than were mined), run through the model by the labeller.
    summary: each unit's value on a probing image, the spatial "mean" or "max" of its map.  "mean" on the store's
        own images reads the stored `pooled` matrix; anything else runs the probing images through the model.
    """

    templates: tuple[str, ...] = ("a photo of a {}", "{}")
    top: int = 5
    word_weight: float = 0.5
    scale: float = 100.0
    words_report: str = "words"
    bootstrap: int = 200
    seed: int = 0
    vocab: str = "default"
    probe_data: str | None = None
    summary: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        _check(self.summary in ("mean", "max"), f"summary must be 'mean' or 'max', got {self.summary!r}")
        _check(self.probe_data is None or bool(str(self.probe_data).strip()),
               "probe_data must be a data spec (e.g. conceptworld:16384:2) or None for the store's own images")
        _check(bool(self.templates) and all("{}" in t for t in self.templates),
               f"templates must be non-empty and each hold '{{}}', got {self.templates!r}")
        _check(self.top >= 1, f"top must be >= 1, got {self.top}")
        _check(self.word_weight >= 0, f"word_weight must be >= 0, got {self.word_weight}")
        _check(self.scale > 0, f"scale must be > 0, got {self.scale}")
        _check(self.bootstrap >= 10, f"bootstrap must be >= 10, got {self.bootstrap}")


def read_word_file(path: str | os.PathLike, option: str) -> list[str]:
    """The entries of a word-list file (one word or phrase per line, '#' starts a comment line), stripped,
    duplicates dropped; ConfigError naming ``option`` and the file when it is missing or holds no entry."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{option} {p} does not exist; give a text file with one word or phrase per line")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"{option} {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    words = list(dict.fromkeys(w for w in lines if w and not w.startswith("#")))
    if not words:
        raise ConfigError(f"{option} {p} holds no words; write one word or phrase per line")
    return words


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(to_json(cfg))


def to_json(cfg: Any) -> str:
    """Canonical JSON of a config: sorted keys, no whitespace, so equal configs give equal strings."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, separators=(",", ":"))


def digest(*parts: Any) -> str:
    """A short stable hex digest of strings and configs (used to name resumable work)."""
    h = hashlib.sha256()
    for p in parts:
        h.update((to_json(p) if dataclasses.is_dataclass(p) else str(p)).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ProbeConfig:
    """Sparse probe fitting (atlas.probes): an L1 path of n_lambdas from lam_max down to lam_max * min_ratio,
    warm-started, stopped when validation accuracy has not improved for ``patience`` lambdas (0: never).  Each
    lambda is solved until its KKT conditions hold to ``tol`` relative to lambda (atlas.probes.solver), at most
    ``max_iter`` steps; a lambda that stops at max_iter is recorded as not converged.
    val_fraction of each class is held out; classes with fewer than min_per_class images are left out."""

    n_lambdas: int = 20
    min_ratio: float = 1e-3
    tol: float = 1e-3
    max_iter: int = 2000
    val_fraction: float = 0.2
    patience: int = 4
    min_per_class: int = 2
    seed: int = 0
    float64: bool = False  # float32 is ~3x faster and agrees to ~1e-6; float64 for solver comparisons

    def __post_init__(self) -> None:
        _check(self.n_lambdas >= 1, f"n_lambdas must be >= 1, got {self.n_lambdas}")
        _check(0 < self.min_ratio < 1, f"min_ratio must be in (0, 1), got {self.min_ratio}")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.min_per_class >= 2, f"min_per_class must be >= 2, got {self.min_per_class}")


@dataclass(frozen=True)
class AnalysesConfig:
    """The reports `atlas build` adds after mining (atlas.analyses): a sparse probe of the last mined layer,
    the typographic attack table, Stroop, per-neuron word sensitivity, the layer's automatic labels and, on Concept
    World, the bias audit.

    label_pattern: regex whose group 1 is the probe's and the attack's class (None: for Concept World data
    ``picto:(\\w+)``, the pictogram classes; else the labels as they are).  attack_images: labelled images the
    attack table stamps (Concept World: held-out pictograms).  audit_groups: a CSV of image,group (paths
    relative to audit_folder) to audit; on Concept World data the default audits the planted attribute."""

    probe: bool = True
    label_pattern: str | None = None
    attacks: bool = True
    attack_images: int = 100  # `atlas attack table` defaults to 200 images and sizes 0.16, 0.3 (docs figures)
    attack_sizes: tuple[float, ...] = (0.3,)
    audit: bool = True
    audit_groups: str | None = None
    audit_folder: str | None = None
    audit_per_group: int = 150
    audit_context: str = "person, {}"
    labels: bool = True  # the probed layer's automatic labels (atlas.labels, default vocabulary)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack_sizes", tuple(self.attack_sizes))
        _check(self.attack_images >= 2, f"attack_images must be >= 2, got {self.attack_images}")
        _check(self.audit_per_group >= 2, f"audit_per_group must be >= 2, got {self.audit_per_group}")
        _check((self.audit_groups is None) == (self.audit_folder is None),
               "audit_groups and audit_folder go together: the CSV names images inside the folder")


@dataclass(frozen=True)
class SaeConfig:
    """Training a TopK sparse autoencoder on one layer (atlas.sae; Gao et al. 2024).

    layer: the canonical layer name whose activations are encoded (every spatial position or patch token of its
        map is one input of d = the layer's units).
    width: features, as a multiple of d ("16x") or a number ("4096"); k: features kept per input (TopK).
    steps, batch, lr: Adam steps over batches of ``batch`` inputs, learning rate (Adam betas 0.9, 0.999).
    aux_k, aux_coef: the auxiliary loss against dead latents: the residual's reconstruction from the ``aux_k``
        largest pre-activations of the dead latents, weighted by ``aux_coef`` (Gao et al.: 512 and 1/32).
    dead_after: a latent that has not fired on the last ``dead_after`` training inputs is dead.
    matryoshka: nested prefixes of the features (Matryoshka SAE; Bussmann et al. 2025, Nabeshima 2024): with n > 1
        the reconstruction loss is the mean over the first F / 2^(n-1), ..., F / 2, F features, each prefix
        reconstructing the input alone, so the first features must be general and later ones refine them
        (counters feature splitting); 1: the plain loss.
    max_images: images the activations come from (None: every image of the source).
    eval_fraction: share of the images held out for the reported figures (fraction of variance explained, L0,
        dead latents); seed: initialization and batch order.
    buffer_rows: activations held at once (atlas.sae.stream): training draws its batches from a shuffle buffer of
        this many rows on the training device, refilled from the stream as they are drawn; the inputs' mean and scale
        come from its first fill.  Memory: buffer_rows x units x 4 bytes (2^19 x 2,560: 5.4 GB).
    eval_rows: at most this many rows of the held-out images are kept for the figures."""

    layer: str
    width: str = "16x"
    k: int = 32
    steps: int = 2000
    batch: int = 1024
    lr: float = 4e-4
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_after: int = 200_000
    matryoshka: int = 1
    max_images: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    buffer_rows: int = 524_288
    eval_rows: int = 262_144

    def __post_init__(self) -> None:
        import re

        object.__setattr__(self, "width", str(self.width))
        m = re.fullmatch(r"(\d+)(x?)", self.width)
        _check(bool(m) and int(m.group(1)) > 0,
               f"--width must be a positive number of features ('4096') or a multiple of the layer's units ('16x'), "
               f"got {self.width!r}")
        _check(self.k >= 1, f"--k must be >= 1, got {self.k}")
        _check(not m or m.group(2) or self.k <= int(m.group(1)),
               f"--k {self.k} is more than --width {self.width} features: TopK keeps k of them; lower --k or widen")
        _check(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        _check(self.batch >= 1, f"--batch must be >= 1, got {self.batch}")
        _check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _check(self.aux_k >= 0 and self.aux_coef >= 0, "aux_k and aux_coef must be >= 0")
        _check(self.dead_after >= 1, f"dead_after must be >= 1, got {self.dead_after}")
        _check(self.matryoshka >= 1, f"--matryoshka must be >= 1 (1: the plain loss), got {self.matryoshka}")
        _check(self.max_images is None or self.max_images >= 1, f"--max-images must be >= 1, got {self.max_images}")
        _check(0 < self.eval_fraction < 1, f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        _check(self.buffer_rows >= 2, f"--buffer-rows must be >= 2, got {self.buffer_rows}")
        _check(self.eval_rows >= 1, f"eval_rows must be >= 1, got {self.eval_rows}")

    def features(self, d: int) -> int:
        """The width in features for a layer of ``d`` units; ConfigError if k does not fit."""
        n = int(self.width[:-1]) * d if self.width.endswith("x") else int(self.width)
        _check(self.k <= n, f"--k {self.k} is more than the {n} features of --width {self.width} on a layer of {d} "
                            "units: TopK keeps k of them; lower --k or widen")
        _check(n >> (self.matryoshka - 1) >= 1, f"--matryoshka {self.matryoshka} halves the {n} features of --width "
                                                 f"{self.width} below one; lower --matryoshka or widen")
        return n
