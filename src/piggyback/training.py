"""Training one task with one method: piggyback, its ternary variant and the baselines.

The loop evaluates on the test split after every epoch and keeps the best checkpoint
by test top-1 (as the original code does). After each epoch it saves everything needed
to continue into ``state_dir``, so a killed job resumes from its last finished epoch
and ends exactly as an uninterrupted run would: every epoch's randomness is seeded
from (seed, epoch), not carried over from the previous epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from piggyback.backbones import TaskModel, backbone_sha256, backbone_state
from piggyback.checkpoints import atomic_save, load_checkpoint
from piggyback.masks import MaskSpec, add_masks, masked_weights

METHODS = ("piggyback", "piggyback_ternary", "classifier_only", "finetune")
MASK_METHODS = {"piggyback": "binary", "piggyback_ternary": "ternary"}


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a changed frozen tensor)."""


@dataclass(frozen=True)
class Hyperparameters:
    """Everything a method's training depends on; ``for_method`` gives the paper's values.

    ``lr`` is the rate of what the method trains inside the backbone: the masks for
    piggyback, the weights for finetune (classifier_only trains none).
    """

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-4
    lr_head: float = 1e-4
    lr_decay_every: int = 15
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    mask_init: str = "1s"
    mask_scale: float = 1e-2
    threshold: float = 5e-3

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> Hyperparameters:
        defaults = dict(_METHOD_DEFAULTS[_check_method(method)])
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)

    def lr_at(self, base: float, epoch: int) -> float:
        """Step decay: ``base * factor ** (epoch // every)`` for 0-based ``epoch``."""
        return base * self.lr_decay_factor ** (epoch // self.lr_decay_every)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "piggyback": {"optimizer": "adam", "lr": 1e-4, "lr_head": 1e-4, "lr_decay_every": 15},
    "piggyback_ternary": {"optimizer": "adam", "lr": 1e-4, "lr_head": 1e-4, "lr_decay_every": 15},
    "classifier_only": {"optimizer": "sgd", "lr": 0.0, "lr_head": 1e-3, "lr_decay_every": 30},
    "finetune": {"optimizer": "sgd", "lr": 1e-3, "lr_head": 1e-3, "lr_decay_every": 15},
}


@dataclass(frozen=True)
class SpeedOptions:
    """Switches that change how fast the method runs, not what it computes.

    ``None`` means the sensible default for the device: channels_last on CUDA, off
    on the CPU; fused optimiser steps everywhere (on the CPU they cut VGG-16's Adam
    step over 138M mask entries from about 1 s to 0.1 s). bf16 autocast is off by
    default because it changes rounding (the masks are still thresholded in fp32: the
    mask's forward runs outside autocast's op lists); turn it on for speed on GPUs.
    """

    amp: str = "off"
    channels_last: bool | None = None
    compile: bool = False
    fused_optimizer: bool | None = None

    def resolve(self, device: torch.device) -> SpeedOptions:
        if self.amp not in ("off", "bf16"):
            raise ValueError(f"unknown amp {self.amp!r}: expected 'off' or 'bf16'")
        on_cuda = device.type == "cuda"
        return SpeedOptions(
            amp=self.amp,
            channels_last=on_cuda if self.channels_last is None else self.channels_last,
            compile=self.compile,
            fused_optimizer=True if self.fused_optimizer is None else self.fused_optimizer,
        )

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    return method


def prepare_model(model: TaskModel, method: str, hp: Hyperparameters) -> list[dict]:
    """Freeze, mask and group the model's parameters as ``method`` needs; returns the
    optimiser's parameter groups (backbone side first, head last)."""
    _check_method(method)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(method == "finetune")
    groups = []
    if method in MASK_METHODS:
        spec = MaskSpec(MASK_METHODS[method], hp.threshold, hp.mask_init, hp.mask_scale)
        masks = add_masks(model.backbone, spec)
        groups.append({"params": [m.mask_real for m in masks.values()], "base_lr": hp.lr})
    elif method == "finetune":
        groups.append({"params": list(model.backbone.parameters()), "base_lr": hp.lr})
    groups.append({"params": list(model.head.parameters()), "base_lr": hp.lr_head})
    return groups


def make_optimizer(
    groups: list[dict], hp: Hyperparameters, fused: bool = False
) -> torch.optim.Optimizer:
    """Adam or SGD over the groups; ``fused`` runs each step as one kernel (the same
    update, computed in one pass instead of one per tensor)."""
    param_groups = [{"params": g["params"], "lr": g["base_lr"]} for g in groups]
    kernel = {"fused": True} if fused else {}
    if hp.optimizer == "adam":
        return torch.optim.Adam(param_groups, weight_decay=hp.weight_decay, **kernel)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, momentum=hp.momentum, weight_decay=hp.weight_decay, **kernel
        )
    raise ValueError(f"unknown optimizer {hp.optimizer!r}: expected 'adam' or 'sgd'")


def set_train_mode(model: TaskModel, method: str) -> None:
    """Train mode, except that BatchNorm stays in eval mode unless finetuning."""
    model.train()
    if method != "finetune":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, speed: SpeedOptions | None = None
) -> dict[str, float]:
    """Top-1 and top-5 error (%) and the image count."""
    speed = (speed or SpeedOptions()).resolve(device)
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.eval()
    top1 = top5 = total = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with speed.autocast(device):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        ranked = logits.topk(k, dim=1).indices
        hits = ranked.eq(labels[:, None])
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        total += labels.numel()
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    return {
        "top1_error": 100.0 * (1 - top1 / total),
        "top5_error": 100.0 * (1 - top5 / total),
        "images": total,
    }


def mask_density(model: TaskModel) -> float | None:
    """Share of mask entries that are non-zero after thresholding."""
    masks = masked_weights(model.backbone)
    if not masks:
        return None
    nonzero = sum(int(m.discrete().count_nonzero()) for m in masks.values())
    return nonzero / sum(m.mask_real.numel() for m in masks.values())


def trained_state(model: TaskModel, method: str) -> dict[str, Any]:
    """What a method learns: masks (real-valued), full weights, or nothing; plus head.
    The tensors are the live ones (no copy): save them before the next step."""
    state: dict[str, Any] = {"head": model.head.state_dict()}
    if method in MASK_METHODS:
        state["masks"] = {k: m.mask_real for k, m in masked_weights(model.backbone).items()}
    elif method == "finetune":
        state["weights"] = backbone_state(model.backbone)
    return state


def load_trained_state(model: TaskModel, state: dict[str, Any]) -> None:
    model.head.load_state_dict(state["head"])
    if "masks" in state:
        masks = masked_weights(model.backbone)
        with torch.no_grad():
            for name, value in state["masks"].items():
                masks[name].mask_real.copy_(value)
    if "weights" in state:
        model.backbone.load_state_dict(state["weights"])


@dataclass
class TaskRun:
    """The identity of one training run, written into its checkpoint."""

    arch: str
    method: str
    dataset: str
    classes: list[str]
    seed: int
    hp: Hyperparameters


def train_task(
    model: TaskModel,
    run: TaskRun,
    train_loader_for: Callable[[int], Any],
    test_loader,
    state_dir: Path,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
    speed: SpeedOptions | None = None,
    resume_every: float = 0.0,
) -> dict[str, Any]:
    """Train, resuming from ``state_dir`` if it holds an unfinished run of the same
    task; returns where the best checkpoint is (``best_path``, in ``state_dir``), its
    summary (``best``) and the per-epoch metrics.

    ``train_loader_for(epoch)`` returns that epoch's loader (seeded by the epoch).
    The resume state and the best checkpoint are written together after an epoch, and
    only once ``resume_every`` seconds have passed since they last were (0: after every
    epoch), and after the last epoch: for epochs of seconds, writing VGG-16's masks
    and Adam moments (1.6 GB) each time would cost more than the epoch. An interrupted
    run resumes from the last write, and ends with the same result either way.
    """
    hp = run.hp
    torch.manual_seed(run.seed)
    model.head.reset_parameters()
    speed = (speed or SpeedOptions()).resolve(device)
    groups = prepare_model(model, run.method, hp)
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    forward = torch.compile(model) if speed.compile else model
    frozen_sha256 = backbone_sha256(model.backbone)
    optimizer = make_optimizer(groups, hp, fused=speed.fused_optimizer)
    identity = {
        "arch": run.arch,
        "method": run.method,
        "dataset": run.dataset,
        "classes": run.classes,
        "seed": run.seed,
        "hyperparameters": hp.as_dict(),
        "backbone_sha256": frozen_sha256,
        "head_name": model.head_name,
        "speed": speed.as_dict(),
    }

    state_dir.mkdir(parents=True, exist_ok=True)
    resume_path, best_path = state_dir / "resume.pt", state_dir / "best.pt"
    start_epoch, metrics, best = 0, [], None
    if resume_path.is_file():
        resume = load_checkpoint(resume_path)
        if resume["identity"] != identity:
            raise TrainingError(
                f"{resume_path} belongs to another run (different arch, data, seed, "
                "hyperparameters or backbone); delete it to start afresh"
            )
        if "trained" in resume:  # absent once the last epoch is done
            load_trained_state(model, resume["trained"])
            optimizer.load_state_dict(resume["optimizer"])
        start_epoch, metrics, best = resume["epoch"], resume["metrics"], resume["best"]
        log(f"resuming {run.dataset} after epoch {start_epoch} from {resume_path}")

    criterion = nn.CrossEntropyLoss()
    last_written = time.monotonic()
    unwritten_best = None  # the best epoch's checkpoint, until it is written
    for epoch in range(start_epoch, hp.epochs):
        started = time.perf_counter()
        lrs = [hp.lr_at(g["base_lr"], epoch) for g in groups]
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        torch.manual_seed(_epoch_seed(run.seed, epoch))
        set_train_mode(model, run.method)
        loss_sum, seen = 0.0, 0
        correct = torch.zeros((), dtype=torch.long, device=device)  # read once per epoch
        batches = train_loader_for(epoch)
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{hp.epochs}", disable=not progress, leave=False
        )
        for batch_index, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with speed.autocast(device):
                logits = forward(images)
                loss = criterion(logits.float(), labels)
            if not math.isfinite(loss_value := loss.item()):
                raise TrainingError(
                    f"non-finite loss ({loss_value}) at epoch {epoch + 1}, "
                    f"batch {batch_index + 1}; no checkpoint was written for this epoch "
                    "(lower the learning rate?)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss_value * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
        test = evaluate(model, test_loader, device, speed)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_top1_error": 100.0 * (1 - correct.item() / max(seen, 1)),
            "test_top1_error": test["top1_error"],
            "test_top5_error": test["top5_error"],
            "lr": lrs[0] if len(lrs) > 1 else 0.0,
            "lr_head": lrs[-1],
            "mask_density": mask_density(model),
            "seconds": time.perf_counter() - started,
            **{f"speed_{k}": v for k, v in speed.as_dict().items()},
        }
        metrics.append(record)
        log(
            f"epoch {epoch + 1}/{hp.epochs}: loss {record['train_loss']:.4f}, "
            f"test top-1 error {test['top1_error']:.2f}%"
        )
        if best is None or test["top1_error"] < best["test_top1_error"]:
            best = {
                "epoch": epoch + 1,
                "test_top1_error": test["top1_error"],
                "test_top5_error": test["top5_error"],
                "test_images": test["images"],
            }
            checkpoint = {
                "format": "piggyback.task",
                "version": 1,
                **identity,
                "mask": _mask_meta(run.method, hp),
                **best,
                **trained_state(model, run.method),
            }
            # the live tensors go on changing: keep a copy if the write is deferred
            unwritten_best = _copied(checkpoint) if resume_every > 0 else checkpoint
        last_epoch = epoch + 1 == hp.epochs
        if not last_epoch and time.monotonic() - last_written < resume_every:
            continue
        if unwritten_best is not None:
            atomic_save(unwritten_best, best_path)
            unwritten_best = None
        resume = {"identity": identity, "epoch": epoch + 1, "metrics": metrics, "best": best}
        if not last_epoch:  # after the last epoch, best.pt holds all that is left
            resume["trained"] = trained_state(model, run.method)
            resume["optimizer"] = optimizer.state_dict()
        atomic_save(resume, resume_path)
        last_written = time.monotonic()

    if run.method != "finetune":
        after = backbone_sha256(model.backbone)
        if after != frozen_sha256:
            raise TrainingError("a frozen backbone tensor changed during training")
    if best is None:
        raise TrainingError(f"no epoch was trained (epochs = {hp.epochs})")
    return {"best_path": best_path, "best": best, "metrics": metrics}


def _mask_meta(method: str, hp: Hyperparameters) -> dict[str, Any] | None:
    if method not in MASK_METHODS:
        return None
    return {"kind": MASK_METHODS[method], "threshold": hp.threshold}


def _copied(value: Any) -> Any:
    """A copy of a checkpoint, its tensors detached and on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch
