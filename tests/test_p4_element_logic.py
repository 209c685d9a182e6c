"""The generated per-element P4 code computes what nina.wire says, without p4c or BMv2.

p4/gen_p4.py emits each element's statements (NAT8 code -> +-(1 << (S - o)) and add, C_M
rounding to a code) from small functions. This test runs those exact statements through a tiny
interpreter of the P4 expression subset they use (unsigned bit<W> arithmetic, slices, ternary,
concatenation; p4c's operator precedence) and compares with nina.wire's reference functions.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from nina import wire

GEN = Path(__file__).resolve().parents[1] / "p4" / "gen_p4.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_p4", GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- a small evaluator: values are (int, width); width None = untyped literal, 0 = bool ----
TOKEN = re.compile(r"\s*(?:(\d+w0x[0-9A-Fa-f]+|\d+w\d+|0x[0-9A-Fa-f]+|\d+)|([A-Za-z_][\w.]*)"
                   r"|(\|\||&&|==|!=|<=|>=|<<|>>|\+\+|[-+~!?:()\[\]<>&|^]))")
BINARY = {  # p4c's precedence (higher binds tighter); all left-associative
    "||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, ">": 4, "<=": 4, ">=": 4,
    "|": 5, "^": 6, "&": 7, "<<": 8, ">>": 8, "++": 9, "+": 9, "-": 9,
}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        assert m and m.end() > pos, f"cannot tokenize {text[pos:]!r}"
        out.append(m.group(m.lastindex))
        pos = m.end()
    return out


class Expr:
    def __init__(self, text: str, env: dict[str, tuple[int, int]]):
        self.toks, self.i, self.env = _tokens(text), 0, env

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None):
        tok = self.toks[self.i]
        assert want is None or tok == want, (want, tok, self.toks)
        self.i += 1
        return tok

    def parse(self):
        v = self.ternary()
        assert self.peek() is None, self.toks[self.i:]
        return v

    def ternary(self):
        cond = self.binary(1)
        if self.peek() != "?":
            return cond
        self.take("?")
        a = self.ternary()
        self.take(":")
        b = self.ternary()
        w = a[1] if a[1] is not None else b[1]
        return _fit(a if cond[0] else b, w)

    def binary(self, level: int):
        left = self.unary()
        while (op := self.peek()) in BINARY and BINARY[op] >= level:
            self.take()
            right = self.binary(BINARY[op] + 1)
            left = _apply(op, left, right)
        return left

    def unary(self):
        tok = self.peek()
        if tok in ("-", "~", "!"):
            self.take()
            v, w = self.unary()
            if tok == "-":
                return (-v) % (1 << w), w
            if tok == "~":
                return ~v & ((1 << w) - 1), w
            return int(not v), 0
        return self.postfix()

    def postfix(self):
        v = self.primary()
        while self.peek() == "[":
            self.take("[")
            hi = int(self.take())
            self.take(":")
            lo = int(self.take())
            self.take("]")
            v = ((v[0] >> lo) & ((1 << (hi - lo + 1)) - 1), hi - lo + 1)
        return v

    def primary(self):
        tok = self.take()
        if tok == "(":
            v = self.ternary()
            self.take(")")
            return v
        if tok[0].isdigit():
            if "w" in tok:
                w, lit = tok.split("w")
                return int(lit, 0), int(w)
            return int(tok, 0), None
        if tok in CONSTS:
            return CONSTS[tok]
        return self.env[tok]


CONSTS = {"NAT8_MAG": (wire.NAT8_MAG, 8), "NAT8_ZERO": (wire.NAT8_ZERO, 8)}


def _fit(v, w):
    return (v[0] % (1 << w), w) if w else v


def _apply(op, a, b):
    if op in ("<<", ">>"):
        w = a[1]
        if op == "<<":
            return ((a[0] << b[0]) % (1 << w) if b[0] < w else 0), w
        return a[0] >> b[0], w
    if op == "++":
        return (a[0] << b[1]) | b[0], a[1] + b[1]
    w = a[1] if a[1] is not None else b[1]
    x, y = a[0], b[0]
    if op in ("||", "&&"):
        return int(bool(x) or bool(y) if op == "||" else bool(x) and bool(y)), 0
    if op in ("==", "!=", "<", ">", "<=", ">="):
        return int({"==": x == y, "!=": x != y, "<": x < y, ">": x > y,
                    "<=": x <= y, ">=": x >= y}[op]), 0
    mask = (1 << w) - 1
    return {"+": (x + y) & mask, "-": (x - y) & mask, "&": x & y, "|": x | y,
            "^": x ^ y}[op], w


class Machine:
    """Runs generated statements; registers are dicts, random() pops from `randoms`."""

    def __init__(self, widths: dict[str, int], values: dict[str, int], regs=None, randoms=()):
        self.widths = widths
        self.env = {n: (values.get(n, 0), w) for n, w in widths.items()}
        self.regs = regs or {}
        self.randoms = list(randoms)

    def run(self, statements: list[str]):
        for st in statements:
            st = st.strip()
            if not st or st.startswith("//") or st.endswith("setValid();"):
                continue
            if m := re.fullmatch(r"random\((\S+), .*\);", st):
                self.env[m[1]] = (self.randoms.pop(0), self.widths[m[1]])
            elif m := re.fullmatch(r"(acc_\d+)\.read\((\S+), meta\.idx\);", st):
                self.env[m[2]] = (self.regs[m[1]], self.widths[m[2]])
            elif m := re.fullmatch(r"(acc_\d+)\.write\(meta\.idx, (.+)\);", st):
                self.regs[m[1]] = Expr(m[2], self.env).parse()[0]
            elif m := re.fullmatch(r"([\w.]+) = (.+);", st):
                w = self.widths[m[1]]
                self.env[m[1]] = _fit(Expr(m[2], self.env).parse(), w)
            else:
                raise AssertionError(f"statement not understood: {st}")
        return self


def _u32(x: int) -> int:
    return int(x) & 0xFFFFFFFF


ELEMENT = 5  # any element index; the code is the same per element up to names


def test_nat8_add_matches_wire(gen):
    rng = np.random.default_rng(1)
    stmts = gen._add_nat8(ELEMENT)
    widths = {"o": 8, "v": 32, "meta.shift": 8, "meta.first": 1,
              f"hdr.codes.e{ELEMENT}": 8, f"hdr.sums.e{ELEMENT}": 32}
    for shift in (wire.headroom_shift(n) for n in (1, 2, 4, 32)):
        codes = np.arange(256, dtype=np.uint8)
        want_add = wire.nat8_to_int(codes, shift).astype(np.int64)
        for code, add in zip(codes, want_add):
            acc = int(rng.integers(-2**30, 2**30))
            for first in (0, 1):
                m = Machine(widths, {"meta.shift": shift, "meta.first": first,
                                     f"hdr.codes.e{ELEMENT}": int(code)},
                            regs={f"acc_{ELEMENT}": _u32(acc)}).run(stmts)
                want = _u32(add if first else acc + add)
                assert m.env[f"hdr.sums.e{ELEMENT}"][0] == want, (shift, code, first)
                assert m.regs[f"acc_{ELEMENT}"] == want


def test_int32_add_matches_int32_arithmetic(gen):
    stmts = gen._add_int32(ELEMENT)
    widths = {"a": 32, "meta.first": 1, f"hdr.words.e{ELEMENT}": 32}
    for acc, x in ((5, -7), (-2**31, -1), (2**31 - 1, 1), (123456, 654321)):
        for first in (0, 1):
            m = Machine(widths, {"meta.first": first, f"hdr.words.e{ELEMENT}": _u32(x)},
                        regs={f"acc_{ELEMENT}": _u32(acc)}).run(stmts)
            want = _u32(x if first else acc + x)
            assert m.regs[f"acc_{ELEMENT}"] == want == m.env[f"hdr.words.e{ELEMENT}"][0]


def test_cm_rounding_matches_wire(gen):
    rng = np.random.default_rng(2)
    sums = [0, 1, -1, 2, 3, -3, 5, 7, 2**29, 2**30, -2**30, 2**30 - 1, -(2**29 + 1),
            *rng.integers(-2**30, 2**30, 300)]
    stmts = gen._cm_element(ELEMENT)
    widths = {"neg": 1, "mag": 32, "t": 32, "b": 8, "p": 8, "pw": 32, "u": 32,
              f"hdr.sums.e{ELEMENT}": 32, f"hdr.codes.e{ELEMENT}": 8}
    for a in sums:
        for u in (0, 0xFFFFFFFF, *rng.integers(0, 2**32, 3, dtype=np.uint64)):
            m = Machine(widths, {f"hdr.sums.e{ELEMENT}": _u32(a)}, randoms=[int(u)]).run(stmts)
            code = m.env[f"hdr.codes.e{ELEMENT}"][0]
            want = int(wire.int_to_cm_codes(np.array([a]), np.array([int(u)]))[0])
            assert code == want, (a, u)
            value = int(wire.cm_codes_to_int(np.array([code], np.uint8))[0])
            assert m.env[f"hdr.sums.e{ELEMENT}"][0] == _u32(value), (a, u)


def test_cm_of_a_power_of_two_is_itself(gen):
    """What makes a retransmission reply re-encode the completed C_M result identically."""
    stmts = gen._cm_element(0)
    widths = {"neg": 1, "mag": 32, "t": 32, "b": 8, "p": 8, "pw": 32, "u": 32,
              "hdr.sums.e0": 32, "hdr.codes.e0": 8}
    for p in range(31):
        for sign in (1, -1):
            for u in (0, 0xFFFFFFFF, 0x5555AAAA):
                m = Machine(widths, {"hdr.sums.e0": _u32(sign * 2**p)}, randoms=[u]).run(stmts)
                assert m.env["hdr.sums.e0"][0] == _u32(sign * 2**p)
                assert m.env["hdr.codes.e0"][0] == (0x80 if sign < 0 else 0) | p
