"""The decoded dataset cache and its device-side batches (docs/data-pipeline.md):
``format`` (the file), ``resize`` (Pillow's resize, batched), ``batches``."""
