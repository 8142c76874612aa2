"""The atlas version, in a module of its own: stores and sites record it without importing anything else."""

__version__ = "0.1.0"
