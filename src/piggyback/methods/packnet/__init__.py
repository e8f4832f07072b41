"""PackNet's registry entry (torch-free), with its knobs; its behaviour is :mod:`.method`."""

from piggyback.methods.entry import Knob, MethodEntry, StoredPart

ENTRY = MethodEntry(
    name="packnet",
    module="piggyback.methods.packnet.method",
    label="PackNet",
    sequential=True,
    freezes_backbone=False,
    released=False,
    summary="free weights trained per task, then pruned by magnitude for the next",
    stores="owners",
    color=None,
    # its owner id (1: the start), the datasets of the chain so far, how the start was made
    checkpoint_fields=("task_id", "chain", "start"),
    # the whole backbone, and each masked weight's owner
    learned=("weights", "owners"),
    parts={
        "network": StoredPart("PackNet's one network, ÷ tasks", "tab:orange", whole_network=True),
        "owners": StoredPart("PackNet's owner map, ÷ tasks", "tab:red"),
    },
    defaults={
        "epochs": 20,
        "optimizer": "sgd",
        "lr": 1e-3,
        "lr_head": 1e-3,
        "lr_decay_every": 10,
    },
    knobs={
        "prune_fraction": Knob(
            0.75,
            "share of a task's weights, per layer, freed for later tasks; 0 or "
            "less (the authors' scripts: -1) prunes nothing, and the last task of "
            "an ordering is never pruned. In the config, one value or one per "
            "position of the ordering (the authors' three tasks: 0.75, 0.75, -1)",
            minimum=-1,
            maximum=1,
            per_position=True,
        ),
        "prune_epochs": Knob(10, "epochs retraining the survivors after pruning", minimum=0),
        "prune_lr": Knob(
            1e-4, "learning rate of that retraining", minimum=0, exclusive_minimum=True
        ),
        "prune_lr_decay_every": Knob(10, "its step decay, in epochs", minimum=1),
        "start_prune_fraction": Knob(
            0.5,
            "share of the pretrained backbone's weights, per layer, freed at the start",
            minimum=0,
            maximum=1,
        ),
        "start_epochs": Knob(
            10,
            "epochs retraining the pruned backbone on its source (with start_dataset)",
            minimum=0,
        ),
        "start_lr": Knob(
            1e-4, "learning rate of that retraining", minimum=0, exclusive_minimum=True
        ),
        "start_lr_decay_every": Knob(5, "its step decay, in epochs", minimum=1),
    },
)
