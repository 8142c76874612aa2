"""Bias audits (`bias`): do a model's neurons, zero-shot classes and concepts tie two groups of images differently?

`audit_images` is the runner: it reads a groups CSV through atlas's decoder, runs `run_audit` and saves
``/audits/<name>`` in a store.  Audits are not attacks: nothing is changed in the images.
"""

from .bias import (CAVEAT, SENSITIVE, AuditConfig, AuditError, AuditResult, audit_images, conceptworld_group_set,
                   read_concepts,
                   read_groups_csv, run_audit, save_audit)

__all__ = ["CAVEAT", "SENSITIVE", "AuditConfig", "AuditError", "AuditResult", "audit_images",
           "conceptworld_group_set", "read_concepts", "read_groups_csv", "run_audit", "save_audit"]
