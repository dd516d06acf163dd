"""FHE backend: the integer graph as a concrete-python circuit (SPEC C6)."""
