"""Typographic attacks and bias audits.

Planned for the probes/attacks/audits issue; nothing here yet.  Concept World (atlas.data.conceptworld)
already plants the bias that the audit must find (docs/conceptworld.md).
"""
