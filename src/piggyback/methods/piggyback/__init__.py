"""Piggyback's registry entries (torch-free), binary and ternary, with the masks' knobs
and their defaults (stated here only); its behaviour is :mod:`.method`."""

from piggyback.methods.entry import Knob, MethodEntry, StoredPart

MASK_KNOBS = {
    "mask_init": Knob(
        "1s",
        "'1s': every entry = mask_scale; 'uniform' in [-scale, scale]",
        choices=("1s", "uniform"),
    ),
    "mask_scale": Knob(
        1e-2, "initial mask value (or range, for 'uniform')", minimum=0, exclusive_minimum=True
    ),
    "threshold": Knob(5e-3, "mask entries above it keep their weight", minimum=0),
}

# What a task's checkpoint holds: the rule that thresholds its masks (kind, threshold),
# and the real-valued masks; its packed file, a keep plane per layer and, for ternary
# masks, a sign plane.
_STORED = {
    "stores": "mask",
    "checkpoint_fields": ("mask",),
    "learned": ("masks",),
    "parts": {"mask": StoredPart("mask", "tab:blue"), "sign": StoredPart("mask", "tab:blue")},
}

ENTRIES = (
    MethodEntry(
        name="piggyback",
        module="piggyback.methods.piggyback.method",
        label="Piggyback",
        sequential=False,
        freezes_backbone=True,
        released=True,
        summary="a binary mask over the frozen backbone's weights, and a head, per task",
        color="tab:blue",
        knobs=MASK_KNOBS,
        options={"mask_kind": "binary"},
        **_STORED,
    ),
    MethodEntry(
        name="piggyback_ternary",
        module="piggyback.methods.piggyback.method",
        label="Piggyback (ternary)",
        sequential=False,
        freezes_backbone=True,
        released=True,
        summary="as piggyback, with masks in {-1, 0, 1} (2 bits per weight)",
        color="tab:purple",
        knobs=MASK_KNOBS,
        options={"mask_kind": "ternary"},
        **_STORED,
    ),
)
