"""Experiments too long to run inside a notebook; each writes a small JSON that the book reads.

Run one as a module, e.g. ``python -m companion.experiments.scaling --preset full``.
"""
