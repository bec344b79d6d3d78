"""surfsep: learn to separate sources from mixtures alone with a flow-matching separator (SURF)."""

__version__ = "0.1.0"

from surfsep.models import AudioSeparator, Separator, load  # noqa: E402
