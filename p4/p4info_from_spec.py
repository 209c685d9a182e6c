"""Write a P4Info for the embedded switch from nina/p4spec.py, for machines without p4c.

p4c's P4Info for p4/nina.p4 (`make p4` with p4c on PATH) is the real one and replaces this
file's output. Until the P4 program has been compiled, the committed p4/build/nina.p4info.txtpb
comes from here: the same names, widths and sizes as p4spec (which the P4 program is generated
from), ids numbered in P4Info's per-kind prefix ranges. It serves the embedded switch only;
BMv2 needs p4c's JSON and P4Info together.
"""
from __future__ import annotations

import argparse
import os
import sys

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nina import p4spec  # noqa: E402

# P4Info id prefixes (p4runtime spec: the most significant byte of an id names its kind)
ACTION, TABLE, COUNTER, REGISTER = 0x01, 0x02, 0x12, 0x16
BANNER = ("# P4Info generated from nina/p4spec.py by p4/p4info_from_spec.py, NOT by p4c.\n"
          "# `make p4` on a machine with p4c replaces it with p4c's output for p4/nina.p4.\n")


def build() -> p4info_pb2.P4Info:
    info = p4info_pb2.P4Info()
    info.pkg_info.arch = "v1model"
    next_id = {ACTION: 0, TABLE: 0, COUNTER: 0, REGISTER: 0}

    def new_id(kind: int) -> int:
        next_id[kind] += 1
        return kind << 24 | next_id[kind]

    noaction = info.actions.add()
    noaction.preamble.id, noaction.preamble.name = new_id(ACTION), "NoAction"
    for t in p4spec.TABLES:
        a = info.actions.add()
        a.preamble.id, a.preamble.name = new_id(ACTION), t.action
        for i, prm in enumerate(t.params, 1):
            p = a.params.add()
            p.id, p.name, p.bitwidth = i, prm.name, prm.bits
        tb = info.tables.add()
        tb.preamble.id, tb.preamble.name, tb.size = new_id(TABLE), t.name, t.size
        for i, (name, bits) in enumerate(t.keys, 1):
            mf = tb.match_fields.add()
            mf.id, mf.name, mf.bitwidth = i, name, bits
            mf.match_type = p4info_pb2.MatchField.EXACT
        tb.action_refs.add().id = a.preamble.id
        ref = tb.action_refs.add()
        ref.id, ref.scope = noaction.preamble.id, p4info_pb2.ActionRef.DEFAULT_ONLY
    for name, bits in p4spec.REGISTERS.items():
        r = info.registers.add()
        r.preamble.id, r.preamble.name, r.size = new_id(REGISTER), name, p4spec.REGISTER_SIZE
        r.type_spec.bitstring.bit.bitwidth = bits
    for name, size in p4spec.COUNTERS.items():
        c = info.counters.add()
        c.preamble.id, c.preamble.name, c.size = new_id(COUNTER), name, size
        c.spec.unit = p4info_pb2.CounterSpec.BOTH
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "build",
                                                  "nina.p4info.txtpb"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(BANNER + text_format.MessageToString(build()))
    print(f"wrote {a.out} (from nina/p4spec.py, not p4c)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
