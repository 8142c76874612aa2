"""Feature visualization: lucent parameterizations and objectives in atlas's batched render loops.

`render_channels` (render.py) is the reference loop; `FastRenderer` / `render_channels_fast` (fast.py) the
fast path that `featurevis` (job.py) uses by default.  objectives.py: what each kind (channel, neuron, direction,
diversity, faceted) maximizes, batched and as lucent objectives; facets.py: the facets of faceted visualization."""

from .facets import FacetResult, train_facet
from .fast import FastOptions, FastRenderer, render_channels_fast
from .job import FeatureVisResult, featurevis
from .objectives import KINDS, Goal
from .render import (Rendered, affine_params, channel_objective, image_param, random_transform, render,
                     render_channels, render_goal, warp)

__all__ = ["FacetResult", "FastOptions", "FastRenderer", "FeatureVisResult", "Goal", "KINDS", "Rendered",
           "affine_params", "channel_objective", "featurevis", "image_param", "random_transform", "render",
           "render_channels", "render_channels_fast", "render_goal", "train_facet", "warp"]
