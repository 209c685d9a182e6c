"""Names of the PyTorch jobs that the command line needs without importing torch: the models
and the communication choices (gloo, or a switch codec)."""
from __future__ import annotations

from nina.wire import Encoding

TORCH_MODELS = ("digits", "mnist1d", "resnet20")

# comm name -> (encoding, master compression, rounding of the INT32 encoder)
CODECS = {"int32": (Encoding.INT32, False, "nearest"),
          "nat8": (Encoding.NAT8, False, "stochastic"),
          "nat8+cm": (Encoding.NAT8, True, "stochastic")}
COMMS = ("gloo",) + tuple(CODECS)

# the names `nina train` uses for the numpy jobs' switch paths
ALIASES = {"none": "int32", "nat": "nat8", "nat+cm": "nat8+cm"}


def comm_name(spec: str) -> str:
    """A --compressor value of a torch job -> its comm; ValueError naming the choices."""
    c = ALIASES.get(spec, spec)
    if c not in COMMS:
        raise ValueError(f"compressor {spec!r} has no torch path (choose from "
                         f"{', '.join(COMMS)}; aliases {', '.join(ALIASES)})")
    return c
