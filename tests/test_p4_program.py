"""The P4 program and its committed p4c outputs agree with the contracts (nina/*.py).

Without p4c: the generated p4/nina.p4 is what p4/gen_p4.py produces now; the committed P4Info
names and shapes exactly the tables, keys, actions, params, registers and counters of
nina/p4spec.py; the committed BMv2 JSON lays out the NINA header as nina.wire.HEADER_FIELDS
and the trace header as nina.decisions.TRACE_DTYPE. With p4c on PATH: the program compiles
and its P4Info equals the committed one.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nina import p4spec
from nina.decisions import TRACE_DTYPE, Decision
from nina.wire import HEADER_FIELDS, ELEMENTS_INT32, ELEMENTS_NAT8, RESULT_PART_SUMS

ROOT = Path(__file__).resolve().parents[1]
P4_DIR = ROOT / "p4"
P4_SRC = P4_DIR / "nina.p4"
P4INFO = P4_DIR / "build" / "nina.p4info.txtpb"
BMV2_JSON = P4_DIR / "build" / "nina.json"


def _load_p4info(path: Path):
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    info = p4info_pb2.P4Info()
    text_format.Parse(path.read_text(), info)
    return info


def _committed_p4info():
    if not P4INFO.exists():
        pytest.skip(f"{P4INFO.relative_to(ROOT)} is not there (it is produced by p4c: make p4)")
    return _load_p4info(P4INFO)


def _committed_json():
    if not BMV2_JSON.exists():
        pytest.skip(f"{BMV2_JSON.relative_to(ROOT)} is not there (it is produced by p4c: make p4)")
    return json.loads(BMV2_JSON.read_text())


def test_generated_program_is_up_to_date(tmp_path):
    out = tmp_path / "nina.p4"
    subprocess.run([sys.executable, str(P4_DIR / "gen_p4.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    assert out.read_text() == P4_SRC.read_text(), \
        "p4/nina.p4 differs from p4/gen_p4.py's output: run `make p4` and commit the result"


def test_program_names_every_p4spec_object():
    """Every fully qualified name of p4spec is declared with an absolute @name in nina.p4."""
    text = P4_SRC.read_text()
    declared = set(re.findall(r'@name\("\.([A-Za-z_][\w.]*)"\)', text))
    wanted = {t.name for t in p4spec.TABLES} | {t.action for t in p4spec.TABLES} \
        | set(p4spec.REGISTERS)
    assert wanted <= declared, sorted(wanted - declared)
    # the counter is declared directly in the ingress control, so it needs no @name
    assert re.search(r"counter\(N_DECISIONS, CounterType.packets_and_bytes\) decisions;", text)
    assert p4spec.CTR_DECISIONS == f"{p4spec.INGRESS}.decisions"


def test_drop_checks_follow_the_protocol_order():
    """JobAdmission assigns the drop reasons in docs/protocol.md's order (the enum's order)."""
    text = P4_SRC.read_text()
    body = text[text.index("control JobAdmission"):text.index("control SlotState")]
    order = re.findall(r"meta\.decision = D_(\w+);", body)
    expected = [d.name for d in Decision if d.name.startswith("DROP_")
                and d is not Decision.DROP_DUPLICATE]
    assert order == expected


def test_p4info_tables_match_p4spec():
    info = _committed_p4info()
    actions = {a.preamble.id: a for a in info.actions}
    tables = {t.preamble.name: t for t in info.tables}
    assert set(tables) == {t.name for t in p4spec.TABLES}
    for spec in p4spec.TABLES:
        t = tables[spec.name]
        keys = [(m.name, m.bitwidth, m.match_type) for m in t.match_fields]
        assert keys == [(name, bits, 2) for name, bits in spec.keys], spec.name  # 2 = EXACT
        entry_actions = [actions[r.id] for r in t.action_refs if r.scope != 2]  # 2 = DEFAULT_ONLY
        assert [a.preamble.name for a in entry_actions] == [spec.action], spec.name
        params = [(p.name, p.bitwidth) for p in entry_actions[0].params]
        assert params == [(p.name, p.bits) for p in spec.params], spec.action
        assert t.size == spec.size, spec.name


def test_p4info_registers_and_counters_match_p4spec():
    info = _committed_p4info()
    regs = {r.preamble.name: r for r in info.registers}
    assert set(regs) == set(p4spec.REGISTERS)
    for name, bits in p4spec.REGISTERS.items():
        assert regs[name].type_spec.bitstring.bit.bitwidth == bits, name
        assert regs[name].size == p4spec.REGISTER_SIZE, name
    counters = {c.preamble.name: c for c in info.counters}
    assert {n: c.size for n, c in counters.items()} == p4spec.COUNTERS
    assert all(c.spec.unit == 3 for c in counters.values())  # 3 = BOTH (packets and bytes)


def _header_types(bmv2: dict) -> dict[str, list[tuple[str, int]]]:
    """header instance name -> [(field, bits)] from a BMv2 JSON."""
    types = {t["name"]: [(f[0], f[1]) for f in t["fields"]] for t in bmv2["header_types"]}
    return {h["name"]: types[h["header_type"]] for h in bmv2["headers"]}


def test_bmv2_json_header_layouts():
    headers = _header_types(_committed_json())
    nina = [(name, np.dtype(dt).itemsize * 8) for name, dt, _ in HEADER_FIELDS]
    assert headers["nina"] == nina
    trace = [(n, TRACE_DTYPE.fields[n][0].itemsize * 8) for n in TRACE_DTYPE.names]
    assert headers["trace"] == trace
    assert headers["words"] == [(f"e{i}", 32) for i in range(ELEMENTS_INT32)]
    assert headers["codes"] == [(f"e{i}", 8) for i in range(ELEMENTS_NAT8)]
    assert headers["sums"] == [(f"e{i}", 32) for i in range(ELEMENTS_NAT8)]
    assert headers["part"] == [(f"e{i}", 32) for i in range(RESULT_PART_SUMS)]


def test_bmv2_json_registers_and_counters():
    bmv2 = _committed_json()
    regs = {r["name"]: (r["bitwidth"], r["size"]) for r in bmv2["register_arrays"]}
    assert regs == {n: (b, p4spec.REGISTER_SIZE) for n, b in p4spec.REGISTERS.items()}
    counters = {c["name"]: c["size"] for c in bmv2["counter_arrays"]}
    assert counters == p4spec.COUNTERS


def test_p4c_compiles_to_the_committed_p4info(tmp_path):
    p4c = shutil.which("p4c")
    if p4c is None:
        print("SKIP reason: p4c is not on PATH")
        pytest.skip("p4c is not on PATH (BMv2/p4c are not packaged; see p4/README.md)")
    info_path = tmp_path / "nina.p4info.txtpb"
    proc = subprocess.run(
        [p4c, "--target", "bmv2", "--arch", "v1model", "-o", str(tmp_path),
         "--p4runtime-files", str(info_path), str(P4_SRC.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    compiled = _load_p4info(info_path)
    assert compiled == _committed_p4info(), \
        "p4/build/nina.p4info.txtpb is stale: run `make p4` and commit p4/build/"
    headers = _header_types(json.loads((tmp_path / "nina.json").read_text()))
    assert headers["nina"] == [(n, np.dtype(dt).itemsize * 8) for n, dt, _ in HEADER_FIELDS]
