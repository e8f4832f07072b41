"""Methods as units: one file per method, each a :class:`piggyback.core.methods.base.Method`
that says what it trains, stores and evaluates. :mod:`piggyback.core.registry` names
them, with their defaults, and loads them."""
