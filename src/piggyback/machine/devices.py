"""One GPU per job: a lease on per-GPU lock files.

Snakemake counts GPUs (``--resources gpu=N``) but never says which one a job gets, so
two jobs on a box with several GPUs would both pick ``cuda:0``. Each job instead takes
an exclusive ``flock`` on a lock file named after a visible GPU's UUID; the operating
system drops the lock when the process ends, even on SIGKILL, so a killed job never
leaves a GPU marked busy. Naming locks by UUID (not index) keeps jobs under a cluster
scheduler, which already narrows ``CUDA_VISIBLE_DEVICES`` to the job's own GPU, from
ever contending with each other.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import torch

_held: list[int] = []  # lock file descriptors, kept open for the life of the process


def lease(candidates: list[str], lock_dir: Path, poll_seconds: float = 1.0) -> int:
    """Index in ``candidates`` of the first one whose lock we could take; waits while
    all are held. The lock lasts until the process exits."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index, name in enumerate(candidates):
            fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held.append(fd)
            return index
        time.sleep(poll_seconds)


def select_device(choice: str, lock_dir: Path) -> torch.device:
    """``auto``: a leased visible GPU if there is one, else the CPU; else as named."""
    if choice != "auto":
        return torch.device(choice)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    uuids = [
        str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
    ]
    index = lease(uuids, lock_dir)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
