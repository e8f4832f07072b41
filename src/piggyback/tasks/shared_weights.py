"""One backbone in memory for many tasks: what each task changes, kept compact, and the
switch that writes a task's weights into the live backbone.

A task is read from the network evaluation builds for it (``stages.evaluation.task_model``),
never from a method's own notion of it, so every method's packs are served alike and a
served task is the evaluated network. Compared over the tasks, a backbone tensor is
either the same in every task (kept once, in the live backbone) or differs:

- the masked weight matrices, all held as one flat buffer (the live parameters are
  views into it), become a **base** (each weight's first non-zero value over the tasks:
  the pretrained weight for Piggyback, the shared network for PackNet) and, per task,
  a keep plane of 1 bit per weight (a sign plane too for ternary masks), packed 8 to a
  byte; a task whose weights are not its mask times the base (a fine-tuned network) keeps
  its own copy instead;
- any other tensor that differs (a fine-tuned network's BatchNorm) is kept per task.

A switch expands the task's planes chunk by chunk (a chunk's float mask stays in the CPU
caches) and multiplies the base by it into the live weights: one pass over the masked
weights in memory, as a plain copy of them is, and two more in the caches
(docs/performance.md, "Serving tasks").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from piggyback.model.masks import masked_parameters

ALIGN = 16  # each weight matrix starts 16 elements (64 bytes, 2 plane bytes) into the buffer
CHUNK = 1 << 19  # weights expanded at a time: its float mask (2 MiB) stays in the caches
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)  # msb first


@dataclass
class TaskWeights:
    """What one task holds besides what every task shares: its planes over the masked
    weights, or a copy of them; and its own value of each tensor that differs."""

    keep: torch.Tensor | None = None  # uint8, 1 bit per masked weight
    sign: torch.Tensor | None = None  # uint8, 1 bit per masked weight: negate the base
    masked: torch.Tensor | None = None  # the masked weights themselves, when not a mask
    others: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        tensors = [self.keep, self.sign, self.masked, *self.others.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class FlatWeights:
    """The masked weight matrices of a backbone as views into one flat buffer (``live``),
    in ``masked_parameters`` order, each at a multiple of ``ALIGN`` elements."""

    def __init__(self, backbone: nn.Module):
        entries = list(masked_parameters(backbone).values())
        dtypes = {entry.parameter.dtype for entry in entries}
        if len(dtypes) != 1:
            raise ValueError(f"masked weights of several dtypes ({sorted(map(str, dtypes))})")
        first = entries[0].parameter
        self.layers: list[tuple[str, int, torch.Size]] = []  # name, offset, shape
        total = 0
        for entry in entries:
            self.layers.append((entry.name, total, entry.shape))
            total += -(-entry.parameter.numel() // ALIGN) * ALIGN
        self.live = torch.zeros(total, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for entry, (_, offset, shape) in zip(entries, self.layers, strict=True):
                view = self.live[offset : offset + shape.numel()].view(shape)
                view.copy_(entry.parameter)
                entry.parameter.data = view
        self.masked_count = sum(entry.parameter.numel() for entry in entries)
        self.base: torch.Tensor | None = None
        self._mask = torch.empty(min(CHUNK, total), dtype=first.dtype, device=first.device)
        self._signs = torch.empty_like(self._mask)

    def encode(self) -> TaskWeights:
        """The live weights as planes over the base, if those give them back exactly (a
        mask, binary or ternary); else a copy of them."""
        live, base = self.live, self.base
        keep = live != 0
        planes = TaskWeights(keep=pack_planes(keep))
        scratch = torch.empty_like(live)
        self.expand(planes, scratch)
        if not torch.equal(scratch, live):
            planes.sign = pack_planes(keep & (live != base))
            self.expand(planes, scratch)
        if torch.equal(scratch, live):
            return planes
        return TaskWeights(masked=live.clone())

    def write(self, weights: TaskWeights) -> None:
        """Put a task's masked weights into the live buffer."""
        if weights.masked is not None:
            self.live.copy_(weights.masked)
        elif weights.keep is not None:
            self.expand(weights, self.live)

    @torch.no_grad()
    def expand(self, planes: TaskWeights, out: torch.Tensor) -> None:
        """``out = base * mask``, the mask expanded from the planes a chunk at a time."""
        for low in range(0, out.numel(), CHUNK):
            high = min(out.numel(), low + CHUNK)
            mask = self._mask[: high - low]
            unpack_planes(planes.keep[low // 8 : high // 8], mask)
            if planes.sign is not None:
                signs = self._signs[: high - low]
                unpack_planes(planes.sign[low // 8 : high // 8], signs)
                mask.sub_(signs, alpha=2)  # sign bits are set only where kept: 1 - 2 = -1
            torch.mul(self.base[low:high], mask, out=out[low:high])


def pack_planes(bits: torch.Tensor) -> torch.Tensor:
    """A boolean vector (a multiple of 8 long) as bytes, 8 bits a byte, msb first."""
    weights = _BITS.to(bits.device)
    return (bits.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_planes(packed: torch.Tensor, out: torch.Tensor) -> None:
    """Bytes to 0/1 values in ``out``: numpy's unpacking on the CPU (one fast pass),
    shifts and masks on other devices."""
    if packed.device.type == "cpu":
        out.copy_(torch.from_numpy(np.unpackbits(packed.numpy())))
    else:
        out.view(-1, 8).copy_(unpack_with_shifts(packed))


def unpack_with_shifts(packed: torch.Tensor) -> torch.Tensor:
    """Bytes to booleans, (bytes, 8), msb first, with tensor ops any device runs."""
    return packed[:, None].bitwise_and(_BITS.to(packed.device)).ne(0)


def share_weights(
    backbone: nn.Module, tasks: Sequence[str], load_task: Callable[[str], None]
) -> tuple[FlatWeights, dict[str, TaskWeights]]:
    """Each task's weights over one backbone: ``load_task(task)`` puts the task's network
    into ``backbone`` (in place); two passes over the tasks find what they share, then
    what each one changes. The backbone ends holding the last task's network."""
    flat = FlatWeights(backbone)
    masked = {name for name, _, _ in flat.layers}
    state = {k: v for k, v in backbone.state_dict().items() if k not in masked}  # live views
    first_masked = first_others = None
    masks_vary, others_vary = False, set()
    for task in tasks:
        load_task(task)
        if first_masked is None:
            first_masked, flat.base = flat.live.clone(), flat.live.clone()
            first_others = {name: tensor.clone() for name, tensor in state.items()}
            continue
        masks_vary = masks_vary or not _same_bits(flat.live, first_masked)
        others_vary |= {n for n, t in state.items() if not _same_bits(t, first_others[n])}
        torch.where(flat.base != 0, flat.base, flat.live, out=flat.base)
    del first_masked, first_others
    weights = {task: TaskWeights() for task in tasks}
    if masks_vary or others_vary:
        for task in tasks:
            load_task(task)
            weights[task] = flat.encode() if masks_vary else TaskWeights()
            weights[task].others = {name: state[name].clone() for name in others_vary}
    if not masks_vary or all(w.masked is not None for w in weights.values()):
        flat.base = None  # nothing is a mask over it
    return flat, weights


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit (a -0.0 is not a 0.0), for tensors of one dtype and shape."""
    return torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
