"""The P4 program and its committed p4c outputs agree with the contracts (nina/*.py).

Without p4c: the generated program (p4/nina.p4 and one file per control in p4/src/) is what
p4/gen_p4.py produces now, with no stale file left over; its includes, expanded, declare every
control, parser, type, table, register and constant once, before its first use, and each
file includes the files whose declarations it uses; the committed P4Info
names and shapes exactly the tables, keys, actions, params, registers and counters of
nina/p4spec.py; the committed BMv2 JSON lays out the NINA header as nina.wire.HEADER_FIELDS
and the trace header as nina.decisions.TRACE_DTYPE. With p4c on PATH: the program compiles
and its P4Info equals the committed one.
"""
from __future__ import annotations

import importlib.util
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
SRC_DIR = P4_DIR / "src"
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


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_p4", P4_DIR / "gen_p4.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def program(gen) -> str:
    """p4/nina.p4 with the project's includes expanded (what p4c compiles)."""
    return gen.expand(P4_SRC)


def test_generated_program_is_up_to_date(tmp_path):
    proc = subprocess.run([sys.executable, str(P4_DIR / "gen_p4.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.p4"))
    on_disk = sorted(p.relative_to(P4_DIR).as_posix() for p in P4_DIR.rglob("*.p4"))
    assert on_disk == fresh, "p4/ has other .p4 files than the generator writes: run `make p4`"
    for rel in fresh:
        assert (tmp_path / rel).read_text() == (P4_DIR / rel).read_text(), \
            f"p4/{rel} differs from p4/gen_p4.py's output: run `make p4` and commit the result"


def test_check_flags_an_edited_and_a_stale_file(gen, tmp_path):
    """`gen_p4.py --check` (what a user runs before committing) fails on a hand edit and on a
    file of a control the generator no longer writes."""
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "src" / "gone.p4").write_text("// a control that was removed\n")
    assert gen.stale_files(tmp_path, gen.program_files()) == ["src/gone.p4"]
    edited = tmp_path / "src" / "admission.p4"
    edited.write_text(edited.read_text().replace("D_DROP_BAD_SLOT", "D_DROP_BAD_WORKER"))
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1
    assert gen.main(["--out", str(tmp_path)]) == 0   # regenerating removes and restores
    assert gen.stale_files(tmp_path, gen.program_files()) == []


# declarations of the expanded program: (kind, name); tables, registers and externs by their
# local name, which P4 requires to be unique within their control
DECL = re.compile(r"^\s*(?:@name\(\"[^\"]*\"\)\s*)?(?:"
                  r"(?P<kind>control|parser|header|struct|table)\s+(?P<name>\w+)"
                  r"|const\s+bit<\d+>\s+(?P<const>\w+)\s*="
                  r"|(?:register<bit<\d+>>|counter)\s*\([^)]*\)\s*(?P<reg>\w+);)",
                  re.M)


def _declarations(text: str) -> list[tuple[str, str]]:
    out = []
    for m in DECL.finditer(text):
        if m.group("kind"):
            out.append((m.group("kind"), m.group("name")))
        elif m.group("const"):
            out.append(("const", m.group("const")))
        else:
            out.append(("extern", m.group("reg")))
    return out


def test_expanded_program_declares_everything_once(program):
    decls = _declarations(program)
    dupes = sorted({d for d in decls if decls.count(d) > 1})
    assert not dupes, dupes
    kinds = {k: {n for kk, n in decls if kk == k} for k in ("control", "parser", "table",
                                                               "extern", "header")}
    assert {p4spec.INGRESS, p4spec.EGRESS, "JobAdmission", "SlotState", "Aggregate",
            "MasterCompress", "ResultBuild", "ResultRewrite", "TraceClone", "TraceEmit",
            "NinaComputeChecksum", "NinaDeparser"} <= kinds["control"]
    assert kinds["parser"] == {"NinaParser"}
    assert kinds["table"] == {t.name.rsplit(".", 1)[1] for t in p4spec.TABLES}
    assert kinds["extern"] == {r.rsplit(".", 1)[1] for r in p4spec.REGISTERS} | {"decisions"}
    # every @name (the P4Info names) once
    names = re.findall(r'@name\("\.([\w.]+)"\)', program)
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    # the pipeline's parts are declared before main uses them
    main = program.index("V1Switch(")
    for part in re.findall(r"(\w+)\(\)", program[main:program.index(" main;", main)]):
        assert re.search(rf"^(control|parser) {part}\(", program[:main], re.M), part


def _src_files() -> list[Path]:
    return sorted(SRC_DIR.glob("*.p4"))


def test_every_file_is_included_and_guarded(gen):
    top = P4_SRC.read_text()
    included = re.findall(r'^#include "src/([\w.]+)"$', top, re.M)
    assert sorted(included) == sorted(p.name for p in _src_files())
    assert included == [f for f, *_ in gen.SRC_FILES]
    for path in _src_files():
        text = path.read_text()
        guard = "NINA_" + path.name.replace(".", "_").upper()
        assert re.search(rf"^#ifndef {guard}\n#define {guard}\n", text, re.M), path.name
        assert text.rstrip().endswith(f"#endif  // {guard}"), path.name


def test_each_file_includes_what_it_uses():
    """A file that uses a type, constant or control declared in another file of p4/src/
    includes that file (directly or through another include), so it reads on its own and the
    include order cannot hide a missing dependency."""
    files = {p.name: p.read_text() for p in _src_files()}
    declared_in = {}
    for name, text in files.items():
        for kind, decl in _declarations(text):
            if kind not in ("table", "extern"):   # those are local to their control
                declared_in.setdefault(decl, name)
    includes = {n: set(re.findall(r'^#include "([\w.]+)"$', t, re.M)) for n, t in files.items()}

    def reach(name: str, seen: set[str]) -> set[str]:
        for inc in includes[name] - seen:
            seen.add(inc)
            reach(inc, seen)
        return seen

    for name, text in files.items():
        code = re.sub(r"//[^\n]*", "", text)
        used = set(re.findall(r"\b[A-Za-z_]\w*\b", code))
        needs = {declared_in[u] for u in used if u in declared_in} - {name}
        missing = needs - reach(name, set())
        assert not missing, (name, sorted(missing))


def test_program_names_every_p4spec_object(program):
    """Every fully qualified name of p4spec is declared with an absolute @name in the program."""
    declared = set(re.findall(r'@name\("\.([A-Za-z_][\w.]*)"\)', program))
    wanted = {t.name for t in p4spec.TABLES} | {t.action for t in p4spec.TABLES} \
        | set(p4spec.REGISTERS)
    assert wanted <= declared, sorted(wanted - declared)
    # the counter is declared directly in the ingress control, so it needs no @name
    assert re.search(r"counter\(N_DECISIONS, CounterType.packets_and_bytes\) decisions;", program)
    assert p4spec.CTR_DECISIONS == f"{p4spec.INGRESS}.decisions"


def test_drop_checks_follow_the_protocol_order():
    """JobAdmission (p4/src/admission.p4) assigns the drop reasons in docs/protocol.md's order
    (the enum's order), and no other file assigns one."""
    body = (SRC_DIR / "admission.p4").read_text()
    assert "control JobAdmission(" in body
    order = re.findall(r"meta\.decision = D_(\w+);", body)
    expected = [d.name for d in Decision if d.name.startswith("DROP_")
                and d is not Decision.DROP_DUPLICATE]
    assert order == expected
    for path in _src_files():
        if path.name != "admission.p4":
            others = set(re.findall(r"meta\.decision = D_(\w+);", path.read_text()))
            assert not others & set(expected), (path.name, others & set(expected))


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
