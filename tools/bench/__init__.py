"""`make bench`: training and evaluation throughput per arch on this machine
(``python -m bench`` with ``tools/`` on the path). Not part of the installed package.

``throughput`` times the training and evaluation steps, ``projection`` turns speeds into
the paper's GPU-hours, ``feed`` measures how fast the input pipelines deliver; the GPU
check (``tools/gpu_check/``) builds on all three."""
