"""NINA shared package: the wire protocol, pipeline decisions and configuration that the switch,
the workers and the topology all use (so none of them imports another)."""

__version__ = "0.1.0"
