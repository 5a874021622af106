"""FCNs with several output heads or several input streams on VGG16 trunks.

* `TwoHeadFCN` (SIFT Flow, reference siftflow-fcn*/net.py): one trunk, one
  FCN head per task (semantic and geometric), each with its own score, skip
  and upsampling layers named with the task's suffix (score_fr_sem,
  upscore2_geo, ...). Returns a dict of logits, one entry per label key.
* `LateFusionFCN` (NYUDv2 RGB-HHA, reference nyud-fcn32s-color-hha/net.py):
  one VGG16 stream per modality with separate weights (conv1_1color ...
  score_frcolor, conv1_1hha ... score_frhha). The input's channels are split
  evenly between the streams; their score maps are combined with the
  reference's Eltwise weights (0.5, 0.5) and upsampled by the shared
  `upscore`. With skips (FCN-16s) each stream fuses its own pool4 score first
  (score_pool4color, ...); the shared final upsampling is linear, so this
  equals fusing the streams at every scale.

Both reuse FCN's layers, crops and options (width, fast ops, dtype, ...).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from fcn_jax import models


class TwoHeadFCN(models.FCN):
  """An FCN trunk with one head per (label key, number of classes, suffix).

  `num_classes` is that of the first head (the main task).
  """
  heads: tuple[tuple[str, int, str], ...] = (('label', 33, '_sem'),
                                             ('geo_label', 3, '_geo'))

  @nn.compact
  def __call__(self, images: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    """(N, H, W, C) inputs -> {label key: (N, H, W, classes) logits}."""
    self.check_settings()
    self.check_input(images)
    feats = self.backbone(images.astype(self.dtype), train)
    height, width = images.shape[1:3]
    return {key: self.upsample_to_input(
        self.coarse_score(feats, suffix, classes), height, width, suffix,
        classes) for key, classes, suffix in self.heads}


class LateFusionFCN(models.FCN):
  """Streams of equal input width whose score maps are summed with weights."""
  streams: tuple[str, ...] = ('color', 'hha')
  fusion_weights: tuple[float, ...] = (0.5, 0.5)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """(N, H, W, 3 * streams) inputs -> (N, H, W, C) fused logits."""
    self.check_settings()
    self.check_input(images)
    per_stream = images.shape[-1] // len(self.streams)
    fused = 0.0
    for index, (suffix, weight) in enumerate(zip(self.streams,
                                                 self.fusion_weights)):
      x = images[..., index * per_stream:(index + 1) * per_stream]
      feats = self.backbone(x.astype(self.dtype), train, suffix)
      fused = fused + weight * self.coarse_score(feats, suffix)
    return self.upsample_to_input(fused, *images.shape[1:3])
