"""Sparse linear probes (L1 logistic regression on pooled activations) and zero-shot heads."""

from .probe import Probe, ProbeError, composition, fit_probe, format_composition, labels_from_pattern
from .solver import fista, l1_path, objective, sklearn_lambda

__all__ = ["Probe", "ProbeError", "composition", "fista", "fit_probe", "format_composition", "l1_path",
           "labels_from_pattern", "objective", "sklearn_lambda"]
