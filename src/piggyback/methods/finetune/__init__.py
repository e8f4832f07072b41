"""Individual Networks' registry entry (torch-free); its behaviour is :mod:`.method`."""

from piggyback.methods.entry import MethodEntry, StoredPart

ENTRY = MethodEntry(
    name="finetune",
    module="piggyback.methods.finetune.method",
    label="Individual Networks",
    sequential=False,
    freezes_backbone=False,
    released=False,
    summary="the whole network fine-tuned per task, BatchNorm included",
    stores="weights",
    color="tab:green",
    learned=("weights",),  # the whole backbone
    parts={"weights": StoredPart("whole network", "tab:green", whole_network=True)},
    defaults={"optimizer": "sgd", "lr": 1e-3, "lr_head": 1e-3},
)
