"""Sparse linear probes (L1 logistic regression on pooled activations) and zero-shot heads.

Planned for the probes/attacks/audits issue; nothing here yet.  The pooled activations they will read are
already mined into every store (`/neurons/<model>/<layer>/pooled`, docs/store.md).
"""
