"""The GPU check (`make gpu-check`; docs/performance.md, "How to measure on a GPU"):
``python -m gpu_check`` with ``src/`` and ``tools/`` on the path. Not part of the
installed package."""
