"""Mining: one pass of a model over an image source that keeps, per unit of each mined layer, the top-k images
with their spatial maps, running statistics and pooled activations, and commits them to the store.

- `loop`: `mine`, the loop over batches (checkpoints, resume, commit) and `float32_matmuls`;
- `layerstate`: `LayerState`, one layer's running results on the model's device;
- `cuda_graphs`: `GraphStep`, the step of full batches replayed from CUDA graphs;
- `fused_tails`: mined ResNet blocks whose last kernel also reduces their output (Triton);
- `thumbs`: the thumbnails of the images the store shows.
"""

from .loop import MineResult, float32_matmuls, mine

__all__ = ["MineResult", "float32_matmuls", "mine"]
