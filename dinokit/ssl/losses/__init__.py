"""Loss functions of the SSL recipe, each in its own module: `dino`, `ibot`, `koleo` (DINOv3 adds `gram`)."""

from .dino import DinoTerm, dino_loss
from .ibot import IbotTerm, ibot_loss
from .koleo import KoleoTerm, koleo_loss

__all__ = ["DinoTerm", "IbotTerm", "KoleoTerm", "dino_loss", "ibot_loss", "koleo_loss"]
