"""Frontends: everything the compiler accepts becomes a ``CanonicalTransformer`` (SPEC C1)."""
