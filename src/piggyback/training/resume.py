"""Where one task's training stands, kept in its state folder so that a killed job resumes:
the phase and epoch reached, the metrics so far, the best epoch of the phase, and what the
method learned with the optimiser's state. It lives beside the training loop, not in it.

``resume.pt`` and ``best.pt`` are written together, atomically, after an epoch once
``resume_every`` seconds have passed since they last were (0: after every epoch), and at
the end of every phase. Between writes the best epoch is kept as a CPU copy: the live
tensors go on changing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from piggyback.methods.base import Method
from piggyback.methods.checkpoints import load_task_checkpoint, task_checkpoint
from piggyback.methods.run import Phase, TrainingError
from piggyback.model.checkpoints import TaskCheckpoint, atomic_save, load_checkpoint


class TrainingState:
    def __init__(
        self,
        state_dir: Path,
        identity: dict[str, Any],
        method: Method,
        model,
        resume_every: float,
        log: Callable[[str], None],
    ):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.resume_path, self.best_path = state_dir / "resume.pt", state_dir / "best.pt"
        self.identity, self.method, self.model = identity, method, model
        self.resume_every, self.log = resume_every, log
        self.phase = self.epoch_in_phase = self.epochs_done = 0
        self.metrics: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # the summary of this phase's best epoch
        self._best_checkpoint: TaskCheckpoint | None = None  # its CPU copy, until written
        self._optimizer_state: dict[str, Any] | None = None
        self._last_written = time.monotonic()

    def resume(self) -> None:
        """Continue from the state folder's resume state, if it holds one of this run: the
        epochs done, the metrics, and what the method learned, loaded into the model."""
        if not self.resume_path.is_file():
            return
        resume = load_checkpoint(self.resume_path)
        if resume["identity"] != self.identity:
            raise TrainingError(
                f"{self.resume_path} belongs to another run (different arch, data, seed, "
                "hyperparameters, backbone or previous task); delete it to start afresh"
            )
        self.phase, self.epoch_in_phase = resume["phase"], resume["epoch_in_phase"]
        self.epochs_done, self.metrics, self.best = (
            resume["epochs_done"],
            resume["metrics"],
            resume["best"],
        )
        if "trained" in resume:  # absent once the last phase is done
            self.method.load_trained_state(self.model, resume["trained"])
            self._optimizer_state = resume.get("optimizer")
        self.log(f"resuming after epoch {self.epochs_done} from {self.resume_path}")

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Continue the optimiser where the resumed epoch left it (not across phases)."""
        if self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None

    def add_baseline(self, test: dict[str, Any], phase: Phase, statistics: dict) -> None:
        """The state a phase starts from, evaluated: the one its epochs must beat."""
        self.metrics.append(
            {
                "epoch": self.epochs_done,
                "phase": phase.name,
                "test_top1_error": test["top1_error"],
                "test_top5_error": test["top5_error"],
                **statistics,
            }
        )
        self.log(f"before {phase.name}: test top-1 error {test['top1_error']:.2f}%")
        self._consider(test, phase)

    def end_epoch(self, record: dict, test: dict, phase: Phase, optimizer) -> None:
        self.metrics.append(record)
        self.epochs_done += 1
        self.epoch_in_phase += 1
        self.log(
            f"epoch {self.epochs_done} ({phase.name}): loss {record['train_loss']:.4f}, "
            f"test top-1 error {test['top1_error']:.2f}%"
        )
        self._consider(test, phase)
        if time.monotonic() - self._last_written >= self.resume_every:
            self._write(optimizer)

    def end_phase(self, phase: Phase, last: bool) -> None:
        """The phase's best becomes the model's state (what the next phase starts from,
        or the result); a phase without epochs or baseline keeps the state as it is."""
        if self.best is None:
            self.best = self._summary(None, phase.name)
            self._keep_best()
        else:
            best = self._best_checkpoint or load_task_checkpoint(self.best_path)
            self.method.load_trained_state(self.model, best.trained_state())
        self.phase, self.epoch_in_phase = self.phase + 1, 0
        if last:  # best.pt holds all that is left
            self._write(optimizer=None, trained=False)
        else:  # the next phase starts from this state, with a best of its own
            self.best = None
            self._write(optimizer=None, trained=True)

    def result(self) -> dict[str, Any]:
        return {"best_path": self.best_path, "best": self.best, "metrics": self.metrics}

    def _consider(self, test: dict[str, Any], phase: Phase) -> None:
        if self.best is None or test["top1_error"] < self.best["test_top1_error"]:
            self.best = self._summary(test, phase.name)
            self._keep_best()

    def _summary(self, test: dict[str, Any] | None, phase: str) -> dict[str, Any]:
        """The best epoch (global, counted from 1; 0 for the state before any) and its
        test errors (None when the phase was not evaluated)."""
        errors = {"test_top1_error": None, "test_top5_error": None, "test_images": None}
        if test is not None:
            errors = {
                "test_top1_error": test["top1_error"],
                "test_top5_error": test["top5_error"],
                "test_images": test["images"],
            }
        return {"epoch": self.epochs_done, "phase": phase, **errors}

    def _keep_best(self) -> None:
        fields = {
            **self.identity,
            **self.method.checkpoint_meta(),
            **self.best,
            **self.method.trained_state(self.model),
        }
        self._best_checkpoint = task_checkpoint(_copied(fields))

    def _write(self, optimizer, trained: bool = True) -> None:
        """best.pt if a newer best is unwritten, then resume.pt, with the model's state
        (``trained``) and the optimiser's when resuming inside a phase."""
        if self._best_checkpoint is not None:
            atomic_save(self._best_checkpoint.to_dict(), self.best_path)
            self._best_checkpoint = None
        resume = {
            "identity": self.identity,
            "phase": self.phase,
            "epoch_in_phase": self.epoch_in_phase,
            "epochs_done": self.epochs_done,
            "metrics": self.metrics,
            "best": self.best,
        }
        if trained:
            resume["trained"] = self.method.trained_state(self.model)
        if optimizer is not None:
            resume["optimizer"] = optimizer.state_dict()
        atomic_save(resume, self.resume_path)
        self._last_written = time.monotonic()


def _copied(value: Any) -> Any:
    """A copy of a checkpoint, its tensors detached and on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value
