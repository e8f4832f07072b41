"""Methods as units: one file per method, each a :class:`piggyback.methods.base.Method`
that says what it trains, stores and evaluates. :mod:`piggyback.methods.registry` names
them, with their defaults, and loads them."""
