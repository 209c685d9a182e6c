"""Compressor specs: "name" or "name:key=value,key=value", optionally prefixed "ef+" for
error feedback. get_compressor builds an operator from a spec; every operator's `spec`
property gives back the canonical spec, so a receiver can rebuild the decoder from a message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .base import Compressor, SeedLike
from .compose import Sparsified
from .dithering import DitherNat, DitherSta
from .errors import CompressorSpecError
from .identity import Identity
from .lowrank import PowerSGD
from .memory import ErrorFeedback
from .natural import Nat8, Nat9
from .optimal import SparseDither, Spherical
from .sparsify import RandK
from .topk import TopK
from .spec import format_value

EF_PREFIX = "ef+"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _norm_p(text: str) -> int | float:
    t = text.strip().lower()
    if t in ("inf", "infinity"):
        return math.inf
    if t in ("1", "2"):
        return int(t)
    raise ValueError(f"{text!r} is not one of 1, 2, inf")


def _count_or_fraction(text: str) -> int | float:
    """An integer is a count of coordinates; anything with '.' or an exponent a fraction of d."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a count nor a fraction") from None


@dataclass(frozen=True)
class Param:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    params: tuple[Param, ...]
    build: Callable[..., Compressor]  # build(seed, **params)


_S_NAT = Param("s", _int, 7, "levels 1..127")
_S_STA = Param("s", _int, 7, "levels 1..65536")
_Q = Param("q", _count_or_fraction, 0.01, "kept coordinates: count, or fraction of d")
_K = Param("k", _count_or_fraction, 0.01, "kept coordinates: count, or fraction of d")

_ENTRIES = (
    Entry("none", "identity: raw float32, 32 bits/element", (),
          lambda seed: Identity(seed=seed)),
    Entry("nat", "natural compression C_nat, 8-bit codes (sign + exponent below the max); "
                 "unbiased, omega 1/8", (), lambda seed: Nat8(seed=seed)),
    Entry("nat9", "natural compression C_nat, 9 bits (sign + full float32 exponent); "
                  "unbiased, omega 1/8", (), lambda seed: Nat9(seed=seed)),
    Entry("dither_nat", "natural dithering D_nat^{p,s}: norm + power-of-two levels + signs; "
                        "unbiased",
          (_S_NAT, Param("p", _norm_p, math.inf, "norm 1|2|inf")),
          lambda seed, s, p: DitherNat(s, p, seed=seed)),
    Entry("dither_sta", "standard random dithering D_sta^{p,s} (QSGD): norm + uniform levels "
                        "+ signs; unbiased",
          (_S_STA, Param("p", _norm_p, 2, "norm 1|2|inf")),
          lambda seed, s, p: DitherSta(s, p, seed=seed)),
    Entry("randk", "random sparsification S^q: q random coordinates scaled by d/q; unbiased, "
                   "omega d/q-1", (_Q,), lambda seed, q: RandK(q, seed=seed)),
    Entry("topk", "top-k sparsification: the k largest |x_i|; biased, contraction k/d",
          (_K,), lambda seed, k: TopK(k, seed=seed)),
    Entry("nat_randk", "C_nat o S^q: random sparsification, kept values natural-compressed; "
                       "unbiased, omega (9/8)(d/q)-1",
          (_Q,), lambda seed, q: Sparsified("nat_randk", RandK(q), Nat8(), seed=seed)),
    Entry("nat_topk", "C_nat o top-k: top-k, kept values natural-compressed; biased",
          (_K,), lambda seed, k: Sparsified("nat_topk", TopK(k), Nat8(), seed=seed)),
    Entry("sparse_dither", "sparse dithering: l2 dithering with s levels sent as sparse "
                           "positions + signs + levels; unbiased",
          (Param("s", _int, 1, "levels 1..65536"),),
          lambda seed, s: SparseDither(s, seed=seed)),
    Entry("spherical", "spherical compression: per block, best codeword of a shared random "
                       "spherical code + bfloat16 length; biased",
          (Param("block", _int, 8, "coordinates per block"),
           Param("bits", _int, 8, "codeword index bits 1..16"),
           Param("codebook_seed", _int, 0, "seed of the shared codebook")),
          lambda seed, block, bits, codebook_seed: Spherical(block, bits, codebook_seed,
                                                             seed=seed)),
    Entry("powersgd", "PowerSGD/PowerGossip rank-r: one warm-started power iteration; "
                      "matrices only; biased",
          (Param("r", _int, 2, "rank"),), lambda seed, r: PowerSGD(r, seed=seed)),
)
REGISTRY: dict[str, Entry] = {e.name: e for e in _ENTRIES}
ALIASES = {"identity": "none", "nat8": "nat", "qsgd": "dither_sta"}


def _known() -> str:
    return ", ".join(REGISTRY) + f" (aliases: {', '.join(ALIASES)}; prefix '{EF_PREFIX}' " \
        "adds error feedback)"


def get_compressor(spec: str, seed: SeedLike = None) -> Compressor | ErrorFeedback:
    """Build an operator from a spec such as "dither_nat:s=4,p=inf" or "ef+topk:k=0.01"."""
    if not isinstance(spec, str) or not spec.strip():
        raise CompressorSpecError(f"compressor spec must be a non-empty string, got {spec!r}; "
                                  f"known: {_known()}")
    spec = spec.strip()
    if spec.lower().startswith(EF_PREFIX):
        return ErrorFeedback(get_compressor(spec[len(EF_PREFIX):], seed))
    name, _, rest = spec.partition(":")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    entry = REGISTRY.get(name)
    if entry is None:
        raise CompressorSpecError(f"unknown compressor {name!r} in {spec!r}; known: {_known()}")
    allowed = {p.name: p for p in entry.params}
    values = {p.name: p.default for p in entry.params}
    seen = set()
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, text = (t.strip() for t in item.partition("="))
        if not eq or not key or not text:
            raise CompressorSpecError(f"{spec!r}: parameter {item!r} is not key=value")
        if key not in allowed:
            hint = ", ".join(allowed) or "none"
            raise CompressorSpecError(
                f"{spec!r}: unknown parameter {key!r} for {name} (accepted: {hint})")
        if key in seen:
            raise CompressorSpecError(f"{spec!r}: parameter {key!r} given twice")
        seen.add(key)
        try:
            values[key] = allowed[key].parse(text)
        except ValueError as e:
            raise CompressorSpecError(f"{spec!r}: {key}: {e} ({allowed[key].help})") from None
    return entry.build(seed, **values)


def split_specs(text: str) -> list[str]:
    """A list of specs as --compare takes it: specs separated by commas, semicolons or
    whitespace, where a `key=value` item after a comma continues the spec before it.
    "nat,dither_nat:s=4,p=inf,int32" is [nat, dither_nat:s=4,p=inf, int32]: compressor names
    never contain "=", so an item with "=" is always a parameter, never a new spec."""
    specs: list[str] = []
    for group in text.replace(";", " ").split():
        for item in filter(None, (s.strip() for s in group.split(","))):
            name = item.partition(":")[0]
            if "=" in name:                         # a parameter: belongs to the spec before
                if not specs or ":" not in specs[-1]:
                    raise CompressorSpecError(
                        f"{text!r}: parameter {item!r} follows no 'name:' spec (write "
                        f"name:key=value,key=value)")
                specs[-1] += "," + item
            else:
                specs.append(item)
    if not specs:
        raise CompressorSpecError(f"no compressor in {text!r}")
    return specs


def list_compressors() -> list[tuple[str, str]]:
    """(name, one-line description with its parameters and defaults), for --help texts."""
    out = []
    for e in _ENTRIES:
        ps = ", ".join(f"{p.name}={format_value(p.default)} ({p.help})" for p in e.params)
        out.append((e.name, e.description + (f" [{ps}]" if ps else "")))
    out.append((EF_PREFIX + "<spec>", "error feedback around any operator: e <- e + x - C(e + x)"))
    return out
