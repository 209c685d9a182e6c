"""The text form of a compressor spec ("name:key=value,..."), shared by the operators (which
name themselves) and the registry (which parses specs); it imports neither."""
from __future__ import annotations

import math
from typing import Any


def format_value(v: Any) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return repr(v) if isinstance(v, float) else str(v)



def format_spec(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in params.items())
