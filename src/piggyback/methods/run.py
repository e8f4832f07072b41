"""The vocabulary of a training run, below both the loop and the methods: what a run is
(``TaskRun``), a stretch of its epochs (``Phase``), how fast it may go and how it
rounds (``SpeedOptions``), the seed of each epoch, and the error that stops it.

Every epoch's randomness is seeded from (seed, epoch) by ``epoch_seed``, not carried over
from the epoch before: the loop, the DataLoader and the cached batches all take their
epoch's seed from here, which is what lets a killed job resume bit-identically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from piggyback.methods.registry import Hyperparameters
from piggyback.model.checkpoints import TaskCheckpoint

ROLES = ("task", "start")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a tensor that must not change did)."""


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimiser and one step schedule. Most methods have
    one; PackNet retrains after pruning. With ``baseline``, the state at the phase's
    start (after ``begin_phase``) is evaluated first and is the one to beat."""

    name: str
    epochs: int
    lr: float  # the backbone side's rate (masks, weights); the head has its own
    lr_head: float
    lr_decay_every: int
    baseline: bool = False

    def lr_at(self, base: float, epoch: int, factor: float) -> float:
        """Step decay for the phase's 0-based ``epoch``."""
        return base * factor ** (epoch // self.lr_decay_every)


@dataclass(frozen=True)
class SpeedOptions:
    """Switches that change how fast the method runs, and two that change its rounding.

    ``None`` means the sensible default for the device: channels_last on CUDA, off
    on the CPU; fused optimiser steps everywhere (on the CPU they cut VGG-16's Adam
    step over 138M mask entries from about 1 s to 0.1 s). The two numerics switches
    are off by default, since the authors ran true fp32 (a Pascal GPU has no TF32):
    ``tf32`` lets CUDA matmuls and cuDNN convolutions round their inputs to TF32's
    10-bit mantissa (PyTorch's own default does so for convolutions); bf16 autocast
    (``amp``) runs most operations in bf16 (the masks are still thresholded in fp32:
    the mask's forward runs outside autocast's op lists). Turn them on for speed on GPUs.
    """

    amp: str = "off"
    channels_last: bool | None = None
    compile: bool = False
    fused_optimizer: bool | None = None
    tf32: bool = False

    def resolve(self, device: torch.device) -> SpeedOptions:
        if self.amp not in ("off", "bf16"):
            raise ValueError(f"unknown amp {self.amp!r}: expected 'off' or 'bf16'")
        on_cuda = device.type == "cuda"
        return dataclasses.replace(
            self,
            channels_last=on_cuda if self.channels_last is None else self.channels_last,
            fused_optimizer=True if self.fused_optimizer is None else self.fused_optimizer,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    def set_float32_precision(self) -> None:
        """TF32 or IEEE fp32 for this process's CUDA matmuls and cuDNN convolutions,
        through torch's ``fp32_precision`` settings (the ``allow_tf32`` flags are their
        deprecated predecessors). The CPU's kernels compute in fp32 either way."""
        precision = "tf32" if self.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TaskRun:
    """The identity of one training run, written into its checkpoint.

    ``role`` is ``task``, or ``start`` for the state a sequential method's first task
    starts from (``dataset`` is then the source to retrain on, or None). ``previous`` is a
    sequential task's predecessor: the previous task's checkpoint, or the start's.
    ``preprocessing`` is how its test images are transformed
    (``TaskTransform.as_dict``), recorded so that the task can be used without the
    config; None where no data is read.
    """

    arch: str
    method: str
    dataset: str | None
    classes: list[str]
    seed: int
    hp: Hyperparameters
    role: str = "task"
    previous: TaskCheckpoint | None = None
    last_in_ordering: bool = False
    preprocessing: dict[str, Any] | None = None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based, counted over all phases) of run ``seed``."""
    return seed * 1_000_003 + epoch
