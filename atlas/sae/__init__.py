"""Sparse autoencoders as first-class units (docs/sae.md): `train_sae` trains a TopK SAE on a mined layer and writes
it beside the store; its features become the virtual layer ``<layer>/saeN`` that `atlas mine` mines like a real one
(atlas.mining.virtual, with the forward in atlas.kernels.sae); `fidelity` measures them on Concept World.

Modules: `train` (the trainer, `fit` / `fit_stream`, and the held-out figures), `stream` (activations as row blocks
from images or a saved buffer, the shuffle buffer), `run` (from a store: `train_sae`, `load_sae`,
`feature_direction`), `fidelity` (zero-shot through the reconstruction, concept features against neurons)."""

from .run import SaeTrainResult, feature_direction, load_sae, train_sae
from .train import SaeError, fit, metrics

__all__ = ["SaeError", "SaeTrainResult", "feature_direction", "fit", "load_sae", "metrics", "train_sae"]
