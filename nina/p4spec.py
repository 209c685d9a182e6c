"""Names and widths of the switch pipeline's control-plane objects.

The P4 program (p4/gen_p4.py emits it from this file), the embedded data plane (which keeps
its state under the same names) and the controller all take the names from here, so a
register read or a table write means the same thing on BMv2 and on the embedded switch.
The P4Info that p4c produces from p4/nina.p4 is the authority at run time; a test checks that
it agrees with this file.
"""
from __future__ import annotations

from dataclasses import dataclass

from nina.decisions import N_DECISIONS
from nina.wire import ELEMENTS_NAT8

INGRESS = "NinaIngress"
EGRESS = "NinaEgress"

POOL_SLOTS = 4096             # slots in the switch; a job owns [slot_base, slot_base + slot_count)
REGISTER_SIZE = 2 * POOL_SLOTS  # every register is indexed by (slot_base + slot) * 2 + ver
N_ACCUMULATORS = ELEMENTS_NAT8  # 256 accumulators; INT32 jobs use the first 64
CPU_PORT = 510                # BMv2's conventional CPU port (unused by NINA)
TRACE_CLONE_SESSION = 100     # clone session that mirrors a trace record to the monitor port
DROP_PORT = 511               # v1model drop port


@dataclass(frozen=True)
class Param:
    name: str
    bits: int


@dataclass(frozen=True)
class Table:
    name: str                              # fully qualified, as in P4Info
    keys: tuple[tuple[str, int], ...]      # (match field name as in P4Info, bits); all exact
    action: str                            # the one action an entry may use
    params: tuple[Param, ...]
    size: int


# Plain forwarding for non-NINA traffic (ARP is static in the rack, so L2 by destination MAC).
L2_FORWARD = Table(f"{INGRESS}.l2_forward", (("hdr.ethernet.dstAddr", 48),),
                   f"{INGRESS}.set_egress", (Param("port", 9),), 1024)

# job -> its configuration. cm: master compression on the downlink. loss_q16: probability
# (x / 65536) of dropping an update on arrival, the switch-side loss simulator.
JOB_TABLE = Table(f"{INGRESS}.job_table", (("hdr.nina.job", 16),),
                  f"{INGRESS}.set_job",
                  (Param("n_workers", 8), Param("slot_base", 16), Param("slot_count", 16),
                   Param("shift", 8), Param("encoding", 8), Param("cm", 8),
                   Param("mcast_grp", 16), Param("loss_q16", 16)), 256)

# (job, worker id, source) -> admitted. Anything else from that id is DROP_UNREGISTERED.
WORKER_TABLE = Table(f"{INGRESS}.worker_table",
                     (("hdr.nina.job", 16), ("hdr.nina.worker", 8),
                      ("standard_metadata.ingress_port", 9), ("hdr.ipv4.srcAddr", 32),
                      ("hdr.udp.srcPort", 16)),
                     f"{INGRESS}.admit", (), 256 * 32)

# (job, destination worker) -> where its copy of a result goes (per-replica egress rewrite).
WORKER_ADDR = Table(f"{EGRESS}.worker_addr", (("meta.job", 16), ("meta.dst_worker", 8)),
                    f"{EGRESS}.set_worker_addr",
                    (Param("dmac", 48), Param("dip", 32), Param("dport", 16),
                     Param("smac", 48), Param("sip", 32)), 256 * 32)

TABLES = (L2_FORWARD, JOB_TABLE, WORKER_TABLE, WORKER_ADDR)

# Registers: name -> bit width; all REGISTER_SIZE entries, indexed (slot_base+slot)*2 + ver.
REG_BITMAP = f"{INGRESS}.bitmap"
REG_COUNT = f"{INGRESS}.count"
REG_MAX_EXP = f"{INGRESS}.max_exp"
REG_OFFSET = f"{INGRESS}.offset"  # chunk offset of the round, echoed in results
REG_ROUND = f"{INGRESS}.round"    # 7-bit round number of the (slot, ver)'s current round


def reg_acc(i: int) -> str:
    return f"{INGRESS}.acc_{i}"


REGISTERS = {REG_BITMAP: 32, REG_COUNT: 8, REG_MAX_EXP: 8, REG_OFFSET: 32, REG_ROUND: 8,
             **{reg_acc(i): 32 for i in range(N_ACCUMULATORS)}}

# Counters (packets and bytes), indexed by nina.decisions.Decision.
CTR_DECISIONS = f"{INGRESS}.decisions"
COUNTERS = {CTR_DECISIONS: N_DECISIONS}
