"""Feature visualization: lucent parameterizations and objectives in atlas's batched render loops.

`render_channels` (render.py) is the reference loop; `FastRenderer` / `render_channels_fast` (fast.py) the
fast path that `featurevis` (job.py) uses by default."""

from .fast import FastOptions, FastRenderer, render_channels_fast
from .job import FeatureVisResult, featurevis
from .render import (Rendered, affine_params, channel_objective, image_param, random_transform, render,
                     render_channels, warp)

__all__ = ["FastOptions", "FastRenderer", "FeatureVisResult", "Rendered", "affine_params", "channel_objective",
           "featurevis", "image_param", "random_transform", "render", "render_channels", "render_channels_fast",
           "warp"]
