"""Feature visualization: lucent parameterizations and objectives in atlas's batched render loop."""

from .job import FeatureVisResult, featurevis
from .render import Rendered, channel_objective, image_param, random_transform, render, render_channels

__all__ = ["FeatureVisResult", "Rendered", "channel_objective", "featurevis", "image_param",
           "random_transform", "render", "render_channels"]
