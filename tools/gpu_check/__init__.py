"""The GPU check (`make gpu-check`; docs/performance.md, "How to measure on a GPU"):
``python -m gpu_check`` with ``src/`` and ``tools/`` on the path. Not part of the
installed package. A GPU is lent rarely, briefly and bare, so every figure comes from one
prepared run; its CPU mode runs the same code at toy sizes in the test suite.

``plan`` holds the two run plans and the timer; ``runner`` walks a plan's sections
(``sections.SECTIONS``), holding each measurement to its time; ``report`` writes the JSON
after every one. ``figures`` measures one configuration, ``correctness`` holds the checks,
``summary`` the derived figures, ``tables`` renders the markdown. Adding a measurement
touches neither the runner nor the report: see ``sections``.

Needs torch, torchvision, numpy, PIL, safetensors, tqdm and tabulate, and PyYAML if there
(for the paper config's method list); never snakemake, jsonschema or ``piggyback.interface.config``,
which the device machine cannot import."""
