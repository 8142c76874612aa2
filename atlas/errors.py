"""Exceptions shared across atlas modules.  Every message says what to do."""


class ModelError(ValueError):
    """A model spec or checkpoint that cannot be parsed or loaded."""
