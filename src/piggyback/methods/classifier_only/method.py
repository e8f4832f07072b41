"""Classifier only: a new linear head on the frozen backbone, BatchNorm in eval mode.

The paper's lower bound: what the ImageNet features give without changing them. Every
behaviour is :class:`piggyback.methods.base.Method`'s default."""

from piggyback.methods.base import Method


class ClassifierOnly(Method):
    """Only the head is trained and stored."""


METHOD = ClassifierOnly
