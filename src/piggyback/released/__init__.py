"""The authors' released masks: ``legacy`` reads torch 0.2 files without running code,
``files`` reads their masks and backbones, ``importing`` writes them as a packed file."""
