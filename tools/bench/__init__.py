"""`make bench`: training and evaluation throughput per arch on this machine
(``python -m bench`` with ``tools/`` on the path). Not part of the installed package."""
