"""One error hierarchy: every error atlas raises for a user to act on is an `AtlasError`, whose message says what
to do; the CLI prints it and exits with code 1 (`atlas.cli`).  Anything else that escapes is a bug, shown with its
traceback.

Each subclass keeps the built-in base it had before this hierarchy (ValueError, RuntimeError, KeyError), so code
that caught those still does."""


class AtlasError(Exception):
    """An error a user can act on; the message says how."""


class ConfigError(AtlasError, ValueError):
    """A configuration value (a step's frozen config, a CLI option) out of its range."""


class ModelError(AtlasError, ValueError):
    """A model spec or checkpoint that cannot be parsed or loaded."""


class StoreError(AtlasError, RuntimeError):
    """A store that cannot be used as asked."""


class StoreBusy(StoreError):
    """Another process is writing the store."""


class LabelError(AtlasError, ValueError):
    """A labelling input that cannot be used: an empty vocabulary file, a word the text tower cannot encode."""
