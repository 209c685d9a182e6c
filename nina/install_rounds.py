"""Job (re)installation: the round state an install writes, and each slot's first round.

Why: a job id can be removed and installed again with the same workers' addresses. A copy of an
update from the earlier installation, held back by the network, must never join a round of the
later one (docs/protocol.md, "Job installations"). Zeroing the slot registers at install would
let any round open a slot, the old copy included. So an install does not zero the round state:
it reads each slot's `count`/`round` registers, takes the latest round M the slot has seen,
and writes the state "idle after an earlier round" such that only round M + 2 (in M's version)
and M + 3 (in the other) can open the slot. The new installation's workers start that slot at
round M + 2. Every update of an earlier installation of this slot carries a round of at most
M + 1 (a worker sends round r + 1 only after round r completed at the switch), so the
unchanged switch algorithm (step 3, "stale") drops it, on both data planes, exactly as it drops
a copy of an earlier round of one installation (and with the same limit: a copy held back for
64 rounds of its slot would be ambiguous again).

A slot that never saw a round since the switch started (count 0 in both versions) starts at
round 0, so a fresh switch behaves as before. The rule reads the registers of the slot range
being installed: a job re-installed on the same range (what the runner and the examples do) is
covered; the copies of a job moved to a *different* range are only as safe as that range's
own history.
"""
from __future__ import annotations

from typing import Sequence

from nina.wire import ROUND_MOD

IDLE_COUNT = 1   # count of an idle version "after an earlier round": any non-zero value


def latest_round(count: tuple[int, int], rnd: tuple[int, int]) -> int | None:
    """The latest round a slot has opened, from its (count, round) registers of version 0 and
    1; None when it has never opened one. The two versions' rounds are adjacent (they
    alternate), so the later one is the one at most half the round space ahead."""
    used = [v for v in (0, 1) if count[v]]
    if not used:
        return None
    if len(used) == 1:
        return rnd[used[0]] % ROUND_MOD
    r0, r1 = rnd[0] % ROUND_MOD, rnd[1] % ROUND_MOD
    return r1 if (r1 - r0) % ROUND_MOD < ROUND_MOD // 2 else r0


def first_round(count: tuple[int, int], rnd: tuple[int, int]) -> int:
    """The round a new installation's workers use first on this slot."""
    m = latest_round(count, rnd)
    return 0 if m is None else (m + 2) % ROUND_MOD


def install_rounds(counts: Sequence[int], rounds: Sequence[int]) -> list[int]:
    """First round per slot of a slot range, from its `count` and `round` registers (cells
    (slot * 2 + ver), as the switch indexes them from the range's first cell)."""
    if len(counts) != len(rounds) or len(counts) % 2:
        raise ValueError("count and round cells must come in (ver 0, ver 1) pairs")
    return [first_round((counts[i], counts[i + 1]), (rounds[i], rounds[i + 1]))
            for i in range(0, len(counts), 2)]


def slot_state(first: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(round, count) register values of version 0 and 1 that admit exactly round `first` (in
    its version) and `first + 1` (in the other) as the next round of the slot."""
    out = []
    for v in (0, 1):
        nxt = first if v == first & 1 else (first + 1) % ROUND_MOD
        out.append(((nxt - 2) % ROUND_MOD, IDLE_COUNT))
    return out[0], out[1]


def install_cells(firsts: Sequence[int]) -> tuple[list[int], list[int]]:
    """The `round` and `count` cell values (slot * 2 + ver) an install writes for `firsts`."""
    rounds, counts = [], []
    for f in firsts:
        for r, c in slot_state(f):
            rounds.append(r)
            counts.append(c)
    return rounds, counts
