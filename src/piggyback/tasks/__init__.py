"""Using trained tasks: a multi-task model over one backbone (``model``), prediction on
image files (``prediction``) and export to a plain torchvision model (``export``)."""
