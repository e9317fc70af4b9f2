"""The loss terms of the SSL objectives, one module each, and the table that names them.

`TERMS` maps a term's name (its config section `losses.<name>` and its metric names) to its config class and
builder (`term.py`). Adding a term is one module and one line here: the configuration schema, the schedules of
its weights, the metrics and the progress bar all follow from the table.
"""

from .dino import DinoLossConfig, DinoTerm, dino_loss
from .features import FeatureClsTerm, FeatureLossConfig, FeaturePatchesTerm, FeatureRelationsTerm
from .gram import GramLossConfig, GramTerm, gram_loss
from .ibot import IbotLossConfig, IbotTerm, ibot_loss
from .koleo import KoleoLossConfig, KoleoTerm, koleo_loss
from .term import BuildContext, LossTerm, TermKind

TERMS: dict[str, TermKind] = {
    "dino": TermKind(DinoLossConfig, DinoTerm.build, heads=("dino",), teacher="heads"),
    "ibot": TermKind(IbotLossConfig, IbotTerm.build, heads=("ibot",), teacher="heads"),
    "koleo": TermKind(KoleoLossConfig, KoleoTerm.build),
    "gram": TermKind(GramLossConfig, GramTerm.build, default_on=False),
    # feature distillation (distill.mode features): the student's `projector` maps its tokens to the teacher's
    "feature_cls": TermKind(FeatureLossConfig, FeatureClsTerm.build, ("projection",), False, "features"),
    "feature_patches": TermKind(FeatureLossConfig, FeaturePatchesTerm.build, ("projection",), False, "features"),
    "feature_relations": TermKind(FeatureLossConfig, FeatureRelationsTerm.build, (), False, "features"),
}

__all__ = [
    "TERMS", "BuildContext", "LossTerm", "TermKind", "DinoTerm", "FeatureClsTerm", "FeaturePatchesTerm",
    "FeatureRelationsTerm", "GramTerm", "IbotTerm", "KoleoTerm", "dino_loss",
    "gram_loss", "ibot_loss", "koleo_loss",
]  # fmt: skip
