"""Data sets: image I/O, the mixture-only and reference views, and the built-in sets."""

from surfsep.data.images import DataError, MixtureSet, ReferenceSet, read_png, write_png

__all__ = ["DataError", "MixtureSet", "ReferenceSet", "read_png", "write_png"]
