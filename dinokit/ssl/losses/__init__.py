"""The loss terms of the SSL objectives, one module each, and the table that names them.

`TERMS` maps a term's name (its config section `losses.<name>` and its metric names) to its config class and
builder (`term.py`). Adding a term is one module and one line here: the configuration schema, the schedules of
its weights, the metrics and the progress bar all follow from the table.
"""

from .dino import DinoLossConfig, DinoTerm, dino_loss
from .gram import GramLossConfig, GramTerm, gram_loss
from .ibot import IbotLossConfig, IbotTerm, ibot_loss
from .koleo import KoleoLossConfig, KoleoTerm, koleo_loss
from .term import BuildContext, LossTerm, TermKind

TERMS: dict[str, TermKind] = {
    "dino": TermKind(DinoLossConfig, DinoTerm.build, heads=("dino",)),
    "ibot": TermKind(IbotLossConfig, IbotTerm.build, heads=("ibot",)),
    "koleo": TermKind(KoleoLossConfig, KoleoTerm.build),
    "gram": TermKind(GramLossConfig, GramTerm.build, default_on=False),
}

__all__ = [
    "TERMS", "BuildContext", "LossTerm", "TermKind", "DinoTerm", "GramTerm", "IbotTerm", "KoleoTerm", "dino_loss",
    "gram_loss", "ibot_loss", "koleo_loss",
]  # fmt: skip
