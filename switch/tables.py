"""Exact-match table store of the embedded switch, shaped by nina.p4spec.Table definitions.

The P4Runtime server and the in-process helpers (Pipeline.install_job) write entries through
here; the pipeline reads the per-table dicts directly on its fast path. Keys and parameters are
plain non-negative ints checked against the P4Info widths, so a write that BMv2 would reject is
rejected here with a similar message and a gRPC-style status code name.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from nina import p4spec


class P4Error(Exception):
    """A control-plane request the switch refuses; `code` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TableError(P4Error):
    """A table write or read the store refuses (unknown table, bad key/param, exists, ...)."""


def _fits(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << bits)


# Listener signature: (table name, "insert" | "modify" | "delete", key, params or None).
Listener = Callable[[str, str, tuple, "tuple | None"], None]


class TableStore:
    """All exact-match tables of the pipeline: name -> {key tuple: params tuple}.

    `entries(name)` returns the live dict (read-only by convention; the pipeline looks keys up
    in it per packet). Params are stored in the order of the table's Param list.
    """

    def __init__(self, tables: Iterable[p4spec.Table] = p4spec.TABLES):
        self.defs: dict[str, p4spec.Table] = {t.name: t for t in tables}
        self._entries: dict[str, dict[tuple, tuple]] = {name: {} for name in self.defs}
        self._listeners: list[Listener] = []

    # ---- introspection ----
    def table(self, name: str) -> p4spec.Table:
        try:
            return self.defs[name]
        except KeyError:
            raise TableError("NOT_FOUND", f"unknown table '{name}'") from None

    def entries(self, name: str) -> dict[tuple, tuple]:
        self.table(name)
        return self._entries[name]

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    # ---- validation ----
    def _key(self, t: p4spec.Table, key: Sequence[int] | Mapping[str, int]) -> tuple:
        return _checked_values(f"table '{t.name}'", "match field", t.keys, key)

    def _params(self, t: p4spec.Table, action: str | None,
                params: Sequence[int] | Mapping[str, int] | None) -> tuple:
        if action is not None and action != t.action:
            raise TableError("INVALID_ARGUMENT",
                             f"table '{t.name}': unknown action '{action}' "
                             f"(the table's action is '{t.action}')")
        return _checked_values(f"action '{t.action}'", "param",
                               [(p.name, p.bits) for p in t.params],
                               () if params is None else params)

    # ---- writes ----
    def insert(self, table: str, key, params=None, action: str | None = None) -> None:
        t = self.table(table)
        k, p = self._key(t, key), self._params(t, action, params)
        entries = self._entries[table]
        if k in entries:
            raise TableError("ALREADY_EXISTS",
                             f"table '{table}': entry with key {k} already exists")
        if len(entries) >= t.size:
            raise TableError("RESOURCE_EXHAUSTED",
                             f"table '{table}' is full ({t.size} entries)")
        entries[k] = p
        self._notify(table, "insert", k, p)

    def modify(self, table: str, key, params=None, action: str | None = None) -> None:
        t = self.table(table)
        k, p = self._key(t, key), self._params(t, action, params)
        entries = self._entries[table]
        if k not in entries:
            raise TableError("NOT_FOUND", f"table '{table}': no entry with key {k}")
        entries[k] = p
        self._notify(table, "modify", k, p)

    def delete(self, table: str, key) -> None:
        t = self.table(table)
        k = self._key(t, key)
        entries = self._entries[table]
        if k not in entries:
            raise TableError("NOT_FOUND", f"table '{table}': no entry with key {k}")
        del entries[k]
        self._notify(table, "delete", k, None)

    def clear(self, table: str | None = None) -> None:
        for name in ([table] if table else list(self.defs)):
            for k in list(self.entries(name)):
                self.delete(name, k)

    # ---- reads ----
    def read(self, table: str, key=None) -> list[tuple[tuple, dict[str, int]]]:
        """[(key, {param: value})]: one entry when `key` is given, else the whole table."""
        t = self.table(table)
        entries = self._entries[table]
        if key is not None:
            k = self._key(t, key)
            if k not in entries:
                raise TableError("NOT_FOUND", f"table '{table}': no entry with key {k}")
            items = [(k, entries[k])]
        else:
            items = list(entries.items())
        return [(k, {p.name: v for p, v in zip(t.params, ps)}) for k, ps in items]

    def lookup(self, table: str, key: tuple) -> tuple | None:
        """Params of the entry with this exact key, or None (no validation: data-plane use)."""
        return self._entries[table].get(key)

    def _notify(self, table: str, op: str, key: tuple, params: tuple | None) -> None:
        for fn in self._listeners:
            fn(table, op, key, params)


def _checked_values(where: str, what: str, fields: Sequence[tuple[str, int]],
                    values: Sequence[int] | Mapping[str, int]) -> tuple:
    """Match fields or action params, given in order or by name, as a tuple in field order;
    every error is the INVALID_ARGUMENT a P4Runtime server gives, naming the field."""
    names = [n for n, _ in fields]
    if isinstance(values, Mapping):
        unknown = set(values) - set(names)
        if unknown:
            raise TableError("INVALID_ARGUMENT",
                             f"{where}: unknown {what} '{sorted(unknown)[0]}'")
        missing = [n for n in names if n not in values]
        if missing:
            raise TableError("INVALID_ARGUMENT", f"{where}: missing {what} '{missing[0]}'")
        values = [values[n] for n in names]
    values = tuple(values)
    if len(values) != len(fields):
        raise TableError("INVALID_ARGUMENT",
                         f"{where}: wrong number of {what}s (expected {len(fields)}, "
                         f"got {len(values)})")
    for (name, bits), v in zip(fields, values):
        if not _fits(v, bits):
            raise TableError("INVALID_ARGUMENT",
                             f"{where}: {what} '{name}' value {v!r} does not fit {bits} bits")
    return values
