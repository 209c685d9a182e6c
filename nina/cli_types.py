"""argparse value types shared by the nina subcommands: a bad value is a one-line usage error
naming the value, never a traceback."""
from __future__ import annotations

import argparse
import math

from nina.wire import MAX_WORKERS


def _number(text: str, kind: type) -> int | float:
    try:
        v = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def _checked(text: str, kind: type, ok, why: str) -> int | float:
    v = _number(text, kind)
    if not ok(v):
        raise argparse.ArgumentTypeError(why.format(text=text, v=v))
    return v


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "{text} must be >= 1")


def nonnegative_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 0, "{text} must be >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (a timeout, a learning rate): 0, negatives, nan and inf refused."""
    return _checked(text, float, lambda v: v > 0, "{text} must be a number > 0")


def finite_float(text: str) -> float:
    return _number(text, float)


def port_number(text: str) -> int:
    return _checked(text, int, lambda v: 0 <= v <= 65535, "{text} is not a port in 0..65535")


def switch_port(text: str) -> int:
    """A switch port number: 9 bits in the P4 program (v1model's egress_spec)."""
    return _checked(text, int, lambda v: 0 <= v < 512, "{text} is not a switch port in 0..511")


def worker_count(text: str) -> int:
    return _checked(text, int, lambda v: 1 <= v <= MAX_WORKERS,
                    f"{{text}}: a job has 1..{MAX_WORKERS} workers (one bit each in the "
                    f"switch's 32-bit bitmap)")


def probability(text: str) -> float:
    return _checked(text, float, lambda v: 0.0 <= v < 1.0,
                    "{text} is not a probability in [0, 1)")


def percentage(text: str) -> float:
    return _checked(text, float, lambda v: 0.0 <= v < 100.0,
                    "{text} is not a percentage in [0, 100)")


def nonnegative(text: str) -> float:
    return _checked(text, float, lambda v: v >= 0, "{text} must be >= 0")


def grpc_address(text: str) -> str:
    """'HOST:PORT' with a port in 1..65535 (a listening or connecting gRPC address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port in 1..65535")
    return text


def host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' (HOST defaults to 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host or "127.0.0.1", int(port)
