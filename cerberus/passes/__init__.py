"""Compiler passes: each a function graph → (graph, report), one module each."""
