"""What the GPU check measures and in how much time: the two run plans, the switch sets,
the methods' order, and the timer that holds a measurement to its share.

Sections run in the plan's order, each in its share of the time: a section may use what
earlier ones left, never what later ones were given. A measurement that would not fit in
what is left is skipped and says so; one that overruns is stopped by ``time_limit``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace

from bench.throughput import BenchSettings

from piggyback.methods.registry import METHODS
from piggyback.methods.run import SpeedOptions

SWITCHES = {
    "off": SpeedOptions(amp="off", channels_last=False, fused_optimizer=False),
    "on": SpeedOptions(amp="bf16", channels_last=True, fused_optimizer=True),
    "compile": SpeedOptions(amp="bf16", channels_last=True, fused_optimizer=True, compile=True),
    # the three numerics side by side, the other switches as "on"
    "fp32": SpeedOptions(amp="off", channels_last=True, fused_optimizer=True),
    "tf32": SpeedOptions(amp="off", channels_last=True, fused_optimizer=True, tf32=True),
}
NUMERICS = {"fp32": "fp32", "tf32": "tf32", "bf16": "on"}  # name: switch set
HEADLINE_METHODS = ("piggyback", "finetune")  # the mask overhead is their ratio
METHOD_ORDER = HEADLINE_METHODS + tuple(m for m in METHODS if m not in HEADLINE_METHODS)


@dataclass(frozen=True)
class Plan:
    """What is measured and in how much time. ``sections`` gives each section's seconds
    in running order; ``unit_s`` the most one measurement of a section may take."""

    mode: str
    archs: tuple[str, ...]  # the headline arch first
    settings: BenchSettings  # the paper's batch
    large: BenchSettings  # batch_size: the largest batch tried
    memory_share: float  # of the GPU's memory a "fitting" batch may need
    check_arch: str
    check_batch: int
    pipeline_images: int
    source_size: tuple[int, int]
    pipeline_epochs: int
    compile: tuple[tuple[str, str], ...]  # (arch, method), in order of importance
    transformer: str  # a vision transformer's Piggyback training, switches on
    sections: dict[str, float]
    unit_s: dict[str, float]
    stand_in: str | None = None  # measured arch standing in for the paper's (CPU mode)

    def scaled(self, seconds: float) -> Plan:
        factor = seconds / sum(self.sections.values())
        return replace(self, sections={k: v * factor for k, v in self.sections.items()})


GPU_PLAN = Plan(
    mode="gpu",
    archs=("resnet50", "vgg16", "densenet121"),
    settings=BenchSettings(224, batch_size=32, eval_batch_size=64, steps=8, warmup=5, repeats=5),
    large=BenchSettings(224, batch_size=256, eval_batch_size=64, steps=4, warmup=3, repeats=3),
    memory_share=0.8,
    check_arch="resnet50",
    check_batch=8,
    pipeline_images=2048,
    source_size=(500, 375),
    pipeline_epochs=2,
    compile=(("resnet50", "piggyback"), ("resnet50", "finetune")),
    transformer="vit_b_16",
    sections={
        "correctness": 25,
        "numerics": 40,
        "train": 140,
        "mask_cost": 10,
        "eval": 20,
        "input": 40,
        "largest_batch": 45,
        "transformer": 20,
        "compile": 95,
        "summary": 15,
    },
    unit_s={
        "correctness": 20,
        "numerics": 13,
        "train": 25,
        "mask_cost": 8,
        "eval": 10,
        "input": 25,
        "largest_batch": 20,
        "transformer": 20,
        "compile": 90,
        "summary": 15,
    },
)

CPU_PLAN = Plan(
    mode="cpu",
    archs=("shufflenet_v2_x0_5",),  # built in a tenth of ResNet-18's time
    settings=BenchSettings(32, batch_size=4, eval_batch_size=8, steps=1, warmup=1, repeats=2),
    large=BenchSettings(32, batch_size=8, eval_batch_size=8, steps=1, warmup=1, repeats=1),
    memory_share=0.8,
    check_arch="shufflenet_v2_x0_5",
    check_batch=4,
    pipeline_images=32,
    source_size=(48, 40),
    pipeline_epochs=1,
    compile=(("shufflenet_v2_x0_5", "piggyback"),),
    transformer="shufflenet_v2_x0_5",  # ViT-B/16 is built for 224 px: seconds a CPU step
    sections={
        "correctness": 60,
        "numerics": 30,
        "train": 120,
        "mask_cost": 30,
        "eval": 30,
        "input": 60,
        "largest_batch": 60,
        "transformer": 30,
        "compile": 30,
        "summary": 60,
    },
    # inductor's CPU compile takes far longer than 3 s: the timer's stop is tested
    unit_s={**{section: 30 for section in GPU_PLAN.sections}, "compile": 3},
    stand_in="shufflenet_v2_x0_5",
)


class OverBudget(BaseException):
    """A measurement ran past its time (a BaseException, so that no library's ``except
    Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``OverBudget`` in the main thread once ``seconds`` have passed; where the
    platform has no interval timer, the measurement runs to its end."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
