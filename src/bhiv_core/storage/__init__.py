"""Storage building blocks: the embedded SQLite database and the MongoDB client every store uses.

Each service defines a storage ``Protocol`` in its ``store.py`` (a ``store/`` package with one module
per backend once it grows, like :mod:`bhiv_core.audit.store`) with a SQLite implementation (the
embedded default) and a MongoDB one (selected by a ``mongodb://`` URL); one contract test suite
runs against both.
"""

__all__: list[str] = []
