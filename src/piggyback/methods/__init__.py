"""Methods as units: a folder per method, its registry entry in ``__init__.py`` (torch-free:
what it is, stores and takes) and its behaviour in ``method.py`` (a
:class:`piggyback.methods.base.Method`: what it trains, stores and evaluates).
:mod:`piggyback.methods.registry` collects the entries and loads the methods."""
