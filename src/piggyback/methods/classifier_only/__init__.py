"""Classifier Only's registry entry (torch-free); its behaviour is :mod:`.method`."""

from piggyback.methods.entry import MethodEntry

ENTRY = MethodEntry(
    name="classifier_only",
    module="piggyback.methods.classifier_only.method",
    label="Classifier Only",
    sequential=False,
    freezes_backbone=True,
    released=False,
    summary="a new head on the frozen backbone",
    stores="head",
    color="tab:gray",
    defaults={"optimizer": "sgd", "lr": 0.0, "lr_head": 1e-3, "lr_decay_every": 30},
)
