"""What the paper's comparison costs at measured speeds: the datasets' image counts, the
passes over them that each method's phases make, and the GPU-hours that follow."""

from __future__ import annotations

import torch

from bench.throughput import start_state
from piggyback.methods.registry import Hyperparameters, load_method, method_entry
from piggyback.methods.run import Phase, TaskRun
from piggyback.model.backbones import ArchSpec, build_task_model

# Train / test images of the paper's datasets (docs/datasets.md); wikiart's split is
# the authors' (about 42k / 10.6k).
PAPER_IMAGES = {
    "cubs_cropped": (5994, 5794),
    "stanford_cars_cropped": (8144, 8041),
    "flowers": (2040, 6149),
    "wikiart": (42129, 10628),
    "sketches": (16000, 4000),
}
PAPER_EPOCHS = 30


def paper_table_gpu_hours(train_img_s: dict[str, float], eval_img_s: dict[str, float]) -> float:
    """Hours for every arch x dataset: 30 epochs, each a pass over train and one over
    test (the per-epoch evaluation), at the measured speeds."""
    seconds = 0.0
    for arch in train_img_s:
        for train_n, test_n in PAPER_IMAGES.values():
            seconds += PAPER_EPOCHS * (train_n / train_img_s[arch] + test_n / eval_img_s[arch])
    return seconds / 3600


def task_phases(method: str, hp: Hyperparameters, last: bool) -> list[Phase]:
    """The phases one task of ``method`` trains in, read off the method itself, prepared
    on a small random model: they depend on the hyperparameters and on whether the task
    is its ordering's last (PackNet prunes all others), not on the arch."""
    arch = "shufflenet_v2_x0_5"  # built and pruned in a tenth of ResNet-18's time
    model = build_task_model(ArchSpec(arch), 2, weights="random")
    previous = None
    if method_entry(method).sequential:
        previous = start_state(arch, method, 2, torch.device("cpu"), hp)
    run = TaskRun(arch, method, "task", [], 0, hp, previous=previous, last_in_ordering=last)
    implementation = load_method(method, hp)
    implementation.prepare(model, run)
    return implementation.phases(run)


def task_passes(
    method: str, hp: Hyperparameters, orderings: list[list[str]]
) -> list[tuple[str, int, int]]:
    """Per task that the comparison trains with ``method``: its dataset, and its passes
    over the train split and over the test split while training. Each epoch is one of
    each (the per-epoch evaluation); a phase that starts from a baseline evaluates once
    more. An independent method trains each dataset once for all orderings; a sequential
    one trains every ordering's chain, in which the last task is not pruned."""
    if method_entry(method).sequential:
        trained = [
            (dataset, position == len(ordering) - 1)
            for ordering in orderings
            for position, dataset in enumerate(ordering)
        ]
    else:  # (dataset, last in its ordering), which only a sequential method minds
        trained = [(dataset, False) for dataset in dict.fromkeys(sum(orderings, []))]
    phases = {last: task_phases(method, hp, last) for last in {last for _, last in trained}}
    return [
        (
            dataset,
            sum(phase.epochs for phase in phases[last]),
            sum(phase.epochs + phase.baseline for phase in phases[last]),
        )
        for dataset, last in trained
    ]


def gpu_hours(
    passes: list[tuple[str, int, int]],
    orderings: list[list[str]],
    train_img_s: float,
    epoch_eval_img_s: float,
    eval_img_s: float,
) -> float:
    """Hours of ``task_passes`` at the given speeds, then of evaluating each packed task
    once per ordering; image counts from ``PAPER_IMAGES``."""
    seconds = sum(
        train * PAPER_IMAGES[dataset][0] / train_img_s
        + test * PAPER_IMAGES[dataset][1] / epoch_eval_img_s
        for dataset, train, test in passes
    )
    tested = sum(PAPER_IMAGES[dataset][1] for ordering in orderings for dataset in ordering)
    return (seconds + tested / eval_img_s) / 3600
