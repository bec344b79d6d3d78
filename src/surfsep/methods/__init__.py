"""Training methods: each one states its loss; ``surfsep.train`` runs them all with one loop."""

from __future__ import annotations

from surfsep.methods.base import Method, StepContext
from surfsep.methods.mixit import MixIT
from surfsep.methods.remixit import RemixIT
from surfsep.methods.self_remixing import SelfRemixing
from surfsep.methods.supervised_flow import SupervisedFlow
from surfsep.methods.supervised_regression import SupervisedRegression
from surfsep.methods.surf import SURF, SURF_VARIANTS

METHODS = {
    "supervised-flow": SupervisedFlow,
    "supervised-regression": SupervisedRegression,
    "mixit": MixIT,
    "remixit": RemixIT,
    "self-remixing": SelfRemixing,
    "surf": SURF,
}


def get_method(name: str, variant: str | None = None) -> Method:
    """Build a method by name; only ``surf`` takes a variant (``remixit-flow`` by default)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    if name == "surf":
        return SURF(variant or SURF_VARIANTS[0])
    if variant:
        raise ValueError(f"method {name!r} has no variants; --variant applies to surf only")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "StepContext", "SURF_VARIANTS", "get_method"]
