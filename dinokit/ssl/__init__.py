"""Self-supervised learning: the DINOv2 / DINOv3 objectives, teacher targets, teachers and the meta-architecture.

Functional API for people who bring their own loop (each reproduces the released loss modules):
`sinkhorn_knopp`, `SoftmaxCentering`, `dino_loss`, `ibot_loss`, `koleo_loss`, `gram_loss`.
"""

from .losses import dino_loss, gram_loss, ibot_loss, koleo_loss
from .targets import SinkhornKnopp, SoftmaxCentering, sinkhorn_knopp

__all__ = [
    "SinkhornKnopp", "SoftmaxCentering", "dino_loss", "gram_loss", "ibot_loss", "koleo_loss", "sinkhorn_knopp",
]  # fmt: skip
