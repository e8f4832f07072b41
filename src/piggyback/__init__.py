"""Piggyback: adapting one frozen network to many tasks by learning binary masks."""

__version__ = "0.1.0"
