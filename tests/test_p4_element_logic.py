"""The generated per-element P4 code computes what nina.wire says, without p4c or BMv2.

p4/gen_p4.py emits each element's statements (NAT8 code -> +-(1 << (S - o)) and add, C_M
rounding to a code) from small functions. This test runs those exact statements through a tiny
interpreter of the P4 expression subset they use (unsigned bit<W> arithmetic, slices, ternary,
concatenation; p4c's operator precedence) and compares with nina.wire's reference functions.
The SlotState and JobAdmission controls run as whole apply blocks against the embedded switch
(switch/pipeline.py) on the same packets, so the P4 program's decisions are checked without
BMv2.
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


# ---- SlotState (steps 2-4 of the switch algorithm) against the embedded switch ----

def _statements(text: str) -> list:
    """Tree of an apply block: ('stmt', text) and ('if', cond, then, else) items."""
    text = re.sub(r"//[^\n]*", "", text)
    flat, cur = [], ""
    for ch in text:
        cur += ch
        if ch in ";{}":
            flat.append(" ".join(cur.split()))
            cur = ""
    assert not cur.strip(), cur

    def block(i: int):
        items = []
        while i < len(flat) and flat[i] != "}":
            st = flat[i]
            m = re.fullmatch(r"(?:else )?if \((.*)\) \{", st)
            if m:
                then, i = block(i + 1)
                node = ["if", m[1], then, []]
                items.append(node)
                while i + 1 < len(flat) and flat[i + 1].startswith("else"):
                    nxt = flat[i + 1]
                    if nxt == "else {":
                        node[3], i = block(i + 2)
                    else:   # else if: a nested if in the else branch
                        m = re.fullmatch(r"else if \((.*)\) \{", nxt)
                        then, i = block(i + 2)
                        inner = ["if", m[1], then, []]
                        node[3] = [inner]
                        node = inner
                i += 1
                continue
            items.append(("stmt", st))
            i += 1
        return items, i

    items, end = block(0)
    assert end == len(flat), flat[end:]
    return items


class BlockMachine:
    """Runs an apply block: declarations, assignments, register read/write, if/else."""

    def __init__(self, widths, values, consts, regs):
        self.widths = dict(widths)
        self.env = {**consts, **{n: (values.get(n, 0), w) for n, w in widths.items()}}
        self.regs = regs   # (register, index) -> value

    def eval(self, text):
        return Expr(text, self.env).parse()

    def run(self, items):
        for item in items:
            if item[0] == "if":
                self.run(item[2] if self.eval(item[1])[0] else item[3])
                continue
            st = item[1]
            if m := re.fullmatch(r"bit<(\d+)> (\w+)(?: = (.+))?;", st):
                self.widths[m[2]] = int(m[1])
                self.env[m[2]] = _fit(self.eval(m[3]), int(m[1])) if m[3] else (0, int(m[1]))
            elif m := re.fullmatch(r"(\w+)\.read\((\S+), (\S+)\);", st):
                self.env[m[2]] = (self.regs.get((m[1], self.eval(m[3])[0]), 0),
                                  self.widths[m[2]])
            elif m := re.fullmatch(r"(\w+)\.write\((\S+), (.+)\);", st):
                self.regs[(m[1], self.eval(m[2])[0])] = self.eval(m[3])[0]
            elif m := re.fullmatch(r"([\w.]+) = (.+);", st):
                self.env[m[1]] = _fit(self.eval(m[2]), self.widths[m[1]])
            else:
                raise AssertionError(f"statement not understood: {st}")


def _cast_aware_primary(self):
    """Expr.primary plus casts `(bit<W>)x`, which the SlotState block uses."""
    if self.peek() == "(" and self.toks[self.i + 1:self.i + 2] == ["bit"]:
        self.take("(")
        self.take("bit")
        self.take("<")
        w = int(self.take())
        self.take(">")
        self.take(")")
        return _fit(self.postfix(), w)
    return _plain_primary(self)


_plain_primary = Expr.primary
Expr.primary = _cast_aware_primary


def _consts(gen) -> dict:
    out = {}
    for m in re.finditer(r"const bit<(\d+)>\s+(\w+) = (0x[0-9A-Fa-f]+|\d+);", gen.const_block()):
        out[m[2]] = (int(m[3], 0), int(m[1]))
    return out


def _apply_block(control_text: str) -> str:
    body = control_text[control_text.index("apply {") + len("apply {"):]
    return body[:body.rstrip().rstrip("}").rstrip().rindex("}")]


def test_slot_state_decides_as_the_embedded_switch(gen):
    """Random mixes of in-order rounds, retransmissions, duplicates and stale copies (round
    numbers wrapping past 127) give the same decision and the same bitmap, count, max_exp,
    offset and round registers in the generated SlotState as in switch/pipeline.py."""
    from nina import p4spec
    from nina.config import JobSpec, WorkerAddr
    from nina.decisions import Decision
    from switch.pipeline import PacketIn, Pipeline

    items = _statements(_apply_block(gen.slot_state_control()))
    consts = _consts(gen)
    names = {"bitmap": p4spec.REG_BITMAP, "count": p4spec.REG_COUNT,
             "max_exp": p4spec.REG_MAX_EXP, "offset": p4spec.REG_OFFSET,
             "round": p4spec.REG_ROUND}
    widths = {**{f"hdr.nina.{n}": b for n, b in gen.NINA},
              **{f"meta.{n}": b for n, b in gen.JOB_PARAMS},
              **{f"meta.{n}": b for n, b in gen.TRACE_META},
              "meta.idx": 32, "meta.decision": 8, "meta.first": 1, "meta.do_update": 1,
              "meta.send_result": 1, "meta.res_exp": 8}
    rng = np.random.default_rng(5)
    for n in (1, 2, 3):
        base, slot = 3, 1
        workers = tuple(WorkerAddr(w, "127.0.0.1", 5000 + w) for w in range(n))
        spec = JobSpec(1, n, wire.Encoding.INT32, slot_base=base, slot_count=2, workers=workers)
        pipe = Pipeline(pool_slots=8, seed=1)
        # an earlier installation left the slot after rounds 121/122: this one starts at 124
        # (nina.install_rounds), so the rounds wrap past 127 early
        for ver, rnd in ((0, 122), (1, 121)):
            pipe.write_register(p4spec.REG_COUNT, (base + slot) * 2 + ver, 1)
            pipe.write_register(p4spec.REG_ROUND, (base + slot) * 2 + ver, rnd)
        first = pipe.install_job(spec)[slot]
        assert first == 124
        # the P4 side starts from the slot state the install wrote (nina.install_rounds)
        regs = {(local, (base + slot) * 2 + ver): pipe.read_register(full, (base + slot) * 2 + ver)
                for ver in (0, 1) for local, full in names.items()}
        nxt = [first] * n          # each worker's next round; they wrap past 127
        done = set()               # rounds completed (the workers have their results)
        sent = []
        decisions = set()
        completed = 0
        for step in range(800):
            w = int(rng.integers(n))
            r = nxt[w]
            if sent and (rng.random() < 0.4 or (r - 1) % 128 not in done and r != first):
                w, r = sent[int(rng.integers(len(sent)))]   # a copy of an earlier packet
            else:
                nxt[w] = (r + 1) % 128
            sent.append((w, r))
            sent = sent[-12:]      # copies are held back by a few rounds at most
            h = wire.Header(msg_type=wire.MsgType.UPDATE, encoding=wire.Encoding.INT32,
                            flags=wire.round_flags(r), job=1, worker=w, slot=slot,
                            exponent=int(rng.integers(256)), offset=int(rng.integers(1 << 32)))
            before = pipe.counters_packets.copy()
            pipe.process(PacketIn(0, 0x7F000001, 5000 + w, wire.pack_packet(h)))
            want = int(np.flatnonzero(pipe.counters_packets != before)[0])
            values = {f"hdr.nina.{f}": getattr(h, f) for f, _ in gen.NINA}
            values.update({"meta.n_workers": n, "meta.slot_base": base})
            m = BlockMachine(widths, values, consts, regs)
            m.run(items)
            got = m.env["meta.decision"][0]
            assert got == want, (n, step, w, r, Decision(got).name, Decision(want).name)
            decisions.add(Decision(got))
            if got == Decision.COMPLETE:
                done.add(r)
                completed += 1
            for ver in (0, 1):
                idx = (base + slot) * 2 + ver
                for local, full in names.items():
                    assert regs.get((local, idx), 0) == pipe.read_register(full, idx), \
                        (n, step, local, ver)
        wanted = {Decision.COMPLETE, Decision.RETRANSMIT_REPLY, Decision.DROP_DUPLICATE}
        if n > 1:
            wanted |= {Decision.FIRST}
        assert wanted <= decisions, (n, decisions)
        assert first + completed > wire.ROUND_MOD, (n, completed)   # the rounds wrapped


class AdmissionMachine(BlockMachine):
    """BlockMachine plus JobAdmission's table applies (from the job and admission entries a
    controller would write) and its loss draw."""

    def __init__(self, widths, values, consts, jobs, admitted, loss_draw, job_params):
        super().__init__(widths, values, consts, {})
        self.jobs, self.admitted, self.loss_draw = jobs, admitted, loss_draw
        self.job_params = job_params

    def run(self, items):
        for item in items:
            st = item[1] if item[0] == "stmt" else None
            if st == "job_table.apply();":
                params = self.jobs.get(self.env["hdr.nina.job"][0])
                if params is not None:
                    self.env["meta.job_hit"] = (1, 1)
                    for (name, bits), v in zip(self.job_params, params):
                        self.env[f"meta.{name}"] = (v, bits)
            elif st == "worker_table.apply();":
                key = tuple(self.env[f][0] for f in (
                    "hdr.nina.job", "hdr.nina.worker", "standard_metadata.ingress_port",
                    "hdr.ipv4.srcAddr", "hdr.udp.srcPort"))
                if key in self.admitted:
                    self.env["meta.admitted"] = (1, 1)
            elif st is not None and st.startswith("random(meta.loss_draw,"):
                self.env["meta.loss_draw"] = (self.loss_draw, 16)
            else:
                super().run([item])


def test_job_admission_decides_as_the_embedded_switch(gen):
    """The generated JobAdmission (every drop check, the capacities, the worker limit, the
    job and admission tables) run on random headers at the field boundaries gives the embedded
    switch's decision: its drop reason, or acceptance when the embedded switch goes on to the
    slot state. A capacity or limit constant off by one in the generator fails here."""
    from nina import p4spec
    from nina.config import JobSpec, WorkerAddr, ip_to_int
    from nina.decisions import Decision
    from switch.pipeline import PacketIn, Pipeline

    text = _apply_block(gen.admission_control()).replace("hdr.nina.isValid()", "hdr.nina.valid")
    items = _statements(text)
    consts = {**_consts(gen), "error.NoError": (0, 8)}
    widths = {**{f"hdr.nina.{n}": b for n, b in gen.NINA},
              **{f"hdr.udp.{n}": b for n, b in gen.UDP},
              **{f"meta.{n}": b for n, b in gen.JOB_PARAMS},
              "hdr.nina.valid": 1, "hdr.ipv4.ihl": 4, "hdr.ipv4.totalLen": 16,
              "hdr.ipv4.flags": 3, "hdr.ipv4.fragOffset": 13, "hdr.ipv4.srcAddr": 32,
              "standard_metadata.parser_error": 8, "standard_metadata.packet_length": 32,
              "standard_metadata.ingress_port": 9, "meta.job": 16, "meta.job_hit": 1,
              "meta.admitted": 1, "meta.accepted": 1, "meta.decision": 8, "meta.loss_draw": 16}
    ip = "127.0.0.1"
    specs = [JobSpec(3, 2, wire.Encoding.NAT8, slot_base=8, slot_count=4,
                     workers=tuple(WorkerAddr(w, ip, 6000 + w) for w in range(2))),
             JobSpec(4, 32, wire.Encoding.INT32, slot_base=16, slot_count=2,
                     workers=tuple(WorkerAddr(w, ip, 7000 + w) for w in range(32)))]
    pipe = Pipeline(pool_slots=p4spec.POOL_SLOTS, seed=1)
    jobs, admitted = {}, set()
    for s in specs:
        pipe.install_job(s)
        jobs[s.job_id] = (s.n_workers, s.slot_base, s.slot_count, s.shift, int(s.encoding),
                          int(s.cm), s.mcast_grp, s.loss_q16)
        admitted |= {(s.job_id, w.wid, w.port, ip_to_int(w.ip), w.udp_port) for w in s.workers}
    # boundary values per field (then random ones); the sender is a registered worker mostly
    pick = {"version": [wire.VERSION, wire.VERSION + 1, 0],
            "msg_type": [wire.MsgType.UPDATE, wire.MsgType.RESULT, 0, 3],
            "encoding": [0, 1, 2],
            "job": [3, 4, 5],
            "worker": [0, 1, 2, 31, 32, 33],
            "count": [0, 63, 64, 65, 127, 128, 255, 256, 257],
            "slot": [0, 1, 2, 3, 4, 0xFFFF]}
    update_len = wire.HEADER_LEN + gen.UPDATE_PAYLOAD_LEN
    rng = np.random.default_rng(9)
    seen = set()
    for step in range(3000):
        f = {k: int(v[rng.integers(len(v))]) for k, v in pick.items()}
        f["flags"] = int(rng.integers(256))
        if rng.random() < 0.1:
            f["worker"] = int(rng.integers(256))
        h = np.zeros((), wire.HEADER_DTYPE)
        for k, v in f.items():
            h[k] = v
        nbytes = update_len if rng.random() < 0.9 else int(rng.choice([10, 16, 271, 273]))
        raw = (h.tobytes() + bytes(gen.UPDATE_PAYLOAD_LEN))[:nbytes].ljust(nbytes, b"\0")
        port = (6000 if f["job"] == 3 else 7000) + f["worker"] % 40
        if rng.random() < 0.1:
            port += 100                                  # not a registered source
        before = pipe.counters_packets.copy()
        pipe.process(PacketIn(0, ip_to_int(ip), port, raw))
        want = Decision(int(np.flatnonzero(pipe.counters_packets != before)[0]))
        parsed = nbytes >= update_len
        values = {**{f"hdr.nina.{k}": v for k, v in f.items()}, "hdr.nina.valid": int(parsed),
                  "hdr.udp.length": 8 + nbytes, "hdr.udp.srcPort": port,
                  "hdr.ipv4.ihl": 5, "hdr.ipv4.totalLen": 28 + nbytes,
                  "hdr.ipv4.srcAddr": ip_to_int(ip),
                  "standard_metadata.parser_error": 0 if parsed else 1,
                  "standard_metadata.packet_length": 42 + nbytes,
                  "meta.decision": int(Decision.FORWARDED)}
        m = AdmissionMachine(widths, values, consts, jobs, admitted, 0xFFFF, gen.JOB_PARAMS)
        m.run(items)
        if want.name.startswith("DROP_") and want != Decision.DROP_DUPLICATE:
            got = Decision(m.env["meta.decision"][0])
            assert (got, m.env["meta.accepted"][0]) == (want, 0), (step, f, nbytes, port)
        else:   # accepted: the slot state decides
            assert m.env["meta.accepted"][0] == 1, (step, f, nbytes, port, want.name)
            want = "ACCEPTED"
        seen.add(want)
    drops = {d for d in Decision if d.name.startswith("DROP_")} - \
        {Decision.DROP_DUPLICATE, Decision.DROP_INJECTED}
    assert drops | {"ACCEPTED"} <= seen, sorted(map(str, drops - seen))
