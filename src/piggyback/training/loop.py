"""Training one task with one method: the loop, which calls the method's hooks and knows
no method by name.

Each phase of the method (one for most; PackNet retrains after pruning) runs its epochs,
evaluating on the test split after each and keeping the best by test top-1 (as the
original code does). Resuming and writing the best checkpoint live beside the loop, in
:class:`piggyback.training.resume.TrainingState`: a killed job resumes after its last
written epoch and ends exactly as an uninterrupted run would, since every epoch's
randomness is seeded from (seed, epoch), not carried over from the epoch before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from piggyback.methods.base import Method
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.methods.run import ROLES, Phase, SpeedOptions, TaskRun, TrainingError, epoch_seed
from piggyback.model.backbones import TaskModel
from piggyback.model.checkpoints import TaskCheckpoint, backbone_sha256, tensors_sha256
from piggyback.stages.evaluation import evaluate
from piggyback.training.resume import TrainingState


def make_optimizer(
    groups: list[dict], hp: Hyperparameters, fused: bool = False
) -> torch.optim.Optimizer:
    """Adam or SGD over the groups; ``fused`` runs each step as one kernel (the same
    update, computed in one pass instead of one per tensor)."""
    param_groups = [
        {"params": g["params"], "lr": g["base_lr"], "base_lr": g["base_lr"]} for g in groups
    ]
    kernel = {"fused": True} if fused else {}
    if hp.optimizer == "adam":
        return torch.optim.Adam(param_groups, weight_decay=hp.weight_decay, **kernel)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, momentum=hp.momentum, weight_decay=hp.weight_decay, **kernel
        )
    raise ValueError(f"unknown optimizer {hp.optimizer!r}: expected 'adam' or 'sgd'")


def prepare_training(
    model: TaskModel, run: TaskRun, device: torch.device, speed: SpeedOptions
) -> tuple[Method, nn.Module]:
    """The run's method, prepared on ``model`` (seeded), the model on the device, and the
    forward to call (compiled if asked): where training and the benchmark both start, so
    both run at the float32 precision the switches say."""
    speed.set_float32_precision()
    method = load_method(run.method, run.hp)
    torch.manual_seed(run.seed)
    method.prepare(model, run)
    model.to(device, memory_format=speed.memory_format)
    return method, torch.compile(model) if speed.compile else model


class TrainStep:
    """One optimisation step exactly as the pipeline takes it (the benchmark times this):
    forward under the speed switches, loss, the method's hooks around the update."""

    def __init__(self, model, forward, method: Method, optimizer, speed: SpeedOptions, device):
        self.model, self.forward, self.method = model, forward, method
        self.optimizer, self.speed, self.device = optimizer, speed, device
        self.criterion = nn.CrossEntropyLoss()

    @classmethod
    def for_phase(cls, model, forward, method: Method, phase: Phase, hp, speed, device):
        """The step of ``phase``, with a fresh optimiser over the method's groups."""
        groups = method.param_groups(model, phase)
        optimizer = make_optimizer(groups, hp, speed.fused_optimizer)
        return cls(model, forward, method, optimizer, speed, device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        """Returns the loss and the count of correct predictions, on the device: reading
        them waits for the GPU, so the caller reads them once per epoch, not per step."""
        images = images.to(self.device, non_blocking=True, memory_format=self.speed.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        with self.speed.autocast(self.device):
            logits = self.forward(images)
            loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward(self.model)
        self.optimizer.step()
        self.method.after_step(self.model)
        return loss.detach(), (logits.argmax(1) == labels).sum()


def train_task(
    model: TaskModel,
    run: TaskRun,
    train_batches_for: Callable[[int], Any] | None,
    test_batches,
    state_dir: Path,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
    speed: SpeedOptions | None = None,
    resume_every: float = 0.0,
) -> dict[str, Any]:
    """Train ``run`` on ``model``, resuming from ``state_dir`` if it holds an unfinished
    run of the same task; returns where the best checkpoint is (``best_path``, in
    ``state_dir``), its summary (``best``) and the per-epoch metrics.

    ``train_batches_for(epoch)`` returns that epoch's batches (seeded by the epoch). The
    resume state and the best checkpoint are written after an epoch once
    ``resume_every`` seconds have passed since the last write (0: every epoch), and at
    the end of each phase: epochs of seconds would otherwise spend longer writing VGG-16's
    state than training.
    """
    speed = (speed or SpeedOptions()).resolve(device)
    identity = _identity(run, model, speed)
    method, forward = prepare_training(model, run, device, speed)
    if method.coverage is not None:
        log(f"{run.arch}: {method.coverage.summary()}")
    state = TrainingState(state_dir, identity, method, model, resume_every, log)
    state.resume()
    phases = method.phases(run)
    for index, phase in enumerate(phases):
        if index < state.phase:
            continue
        if state.epoch_in_phase == 0:
            method.begin_phase(model, phase)
            if phase.baseline:  # the state the phase starts from is the one to beat
                test = evaluate(model, test_batches, device, speed)
                state.add_baseline(test, phase, method.statistics(model))
        step = TrainStep.for_phase(model, forward, method, phase, run.hp, speed, device)
        optimizer = step.optimizer
        state.restore_optimizer(optimizer)
        for epoch in range(state.epoch_in_phase, phase.epochs):
            started = time.perf_counter()
            lrs = _set_learning_rates(optimizer, phase, epoch, run.hp.lr_decay_factor)
            torch.manual_seed(epoch_seed(run.seed, state.epochs_done))
            method.train_mode(model)
            train = _train_epoch(step, train_batches_for(state.epochs_done), state, progress)
            test = evaluate(model, test_batches, device, speed)
            record = {
                "epoch": state.epochs_done + 1,
                "phase": phase.name,
                **train,
                "test_top1_error": test["top1_error"],
                "test_top5_error": test["top5_error"],
                "lr": lrs[0] if len(lrs) > 1 else 0.0,
                "lr_head": lrs[-1],
                **method.statistics(model),
                "seconds": time.perf_counter() - started,
                **{f"speed_{k}": v for k, v in speed.as_dict().items()},
            }
            state.end_epoch(record, test, phase, optimizer)
        state.end_phase(phase, last=index == len(phases) - 1)
    method.check_trained(model)
    return state.result()


def _set_learning_rates(optimizer, phase: Phase, epoch: int, factor: float) -> list[float]:
    lrs = [phase.lr_at(group["base_lr"], epoch, factor) for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return lrs


def _train_epoch(step: TrainStep, batches, state: TrainingState, progress: bool) -> dict:
    """One pass over the batches: mean loss and top-1 error on what was trained. Sums
    stay on the device and are read once, at the end; a non-finite loss stops training
    there, naming its first batch, before any checkpoint of the epoch is written."""
    device, epoch = step.device, state.epochs_done + 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    seen = 0
    for index, (images, labels) in enumerate(
        tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
    ):
        loss, hits = step(images, labels)
        bad = ~torch.isfinite(loss) & (first_bad < 0)
        first_bad = torch.where(bad, index, first_bad)
        loss_sum += loss.double() * labels.numel()
        correct += hits
        seen += labels.numel()
    if (batch := int(first_bad)) >= 0:
        raise TrainingError(
            f"non-finite loss at epoch {epoch}, batch {batch + 1}; no checkpoint was "
            "written for this epoch (lower the learning rate?)"
        )
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_top1_error": 100.0 * (1 - int(correct) / max(seen, 1)),
    }


def _identity(run: TaskRun, model: TaskModel, speed: SpeedOptions) -> dict[str, Any]:
    """What makes two runs the same run: resume state of another is refused."""
    if run.role not in ROLES:
        raise ValueError(f"unknown role {run.role!r}: expected one of {ROLES}")
    identity = {
        "arch": run.arch,
        "method": run.method,
        "role": run.role,
        "dataset": run.dataset,
        "classes": run.classes,
        "seed": run.seed,
        "hyperparameters": run.hp.as_dict(),
        "backbone_sha256": backbone_sha256(model.backbone),  # the pretrained backbone
        "head_name": model.head_name,
        "speed": speed.as_dict(),
    }
    if run.preprocessing is not None:
        identity["preprocessing"] = run.preprocessing
    if run.previous is not None:
        previous = run.previous
        if previous.backbone_sha256 != identity["backbone_sha256"]:
            raise TrainingError(
                "the previous task was trained from other backbone weights "
                f"({previous.backbone_sha256[:16]}...) than the ones given "
                f"({identity['backbone_sha256'][:16]}...)"
            )
        identity["previous"] = {"dataset": previous.dataset, "sha256": _learned_sha256(previous)}
        identity["last_in_ordering"] = run.last_in_ordering
    return identity


def _learned_sha256(checkpoint: TaskCheckpoint) -> str:
    """sha256 over every tensor the checkpoint's method learned, keyed "head/weight"..."""
    flat = {
        f"{part}/{name}": tensor
        for part, tensors in checkpoint.trained_state().items()
        for name, tensor in tensors.items()
    }
    return tensors_sha256(flat)
