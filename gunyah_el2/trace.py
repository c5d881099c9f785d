"""A trace of every hypercall: JSON lines to a file when asked, and the last ones in memory.

Each record: time since start, CPU, conduit, call name, decoded arguments and results (from the
hypercall table), EL2 actions, and the Python time spent.  The in-memory tail is what failure
reports show ("the last trapped calls").
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import IO


def _jsonable(value):
    if isinstance(value, int):
        return value
    return repr(value)


class Tracer:
    def __init__(self, path: str | None = None, keep: int = 64):
        self.t0 = time.perf_counter()
        self.recent: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def _emit(self, record: dict) -> None:
        with self._lock:
            self.recent.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, default=_jsonable) + "\n")

    def call(self, exit, name: str, args: dict, results: dict, started: float,
             actions: list = ()) -> None:
        """Called on the hot path: keeps raw values; records are built only when read."""
        self.count += 1
        raw = (started, time.perf_counter(), exit.cpu, exit.conduit, name, args, results,
               actions)
        with self._lock:
            self.recent.append(raw)
            if self._file is not None:
                self._file.write(json.dumps(self._record(raw), default=_jsonable) + "\n")

    def _record(self, raw) -> dict:
        if isinstance(raw, dict):
            return raw
        started, ended, cpu, conduit, name, args, results, actions = raw
        record = {"t": round(started - self.t0, 7), "cpu": cpu, "conduit": conduit,
                  "call": name, "args": {k: _jsonable(v) for k, v in args.items()},
                  "results": {k: _jsonable(v) for k, v in results.items()},
                  "py_us": round((ended - started) * 1e6, 1)}
        if actions:
            record["actions"] = [repr(a) for a in actions]
        return record

    def event(self, name: str, **info) -> None:
        self._emit({"t": round(time.perf_counter() - self.t0, 6), "event": name,
                    **{k: _jsonable(v) for k, v in info.items()}})

    def records(self) -> list[dict]:
        with self._lock:
            return [self._record(r) for r in self.recent]

    def rpc(self, direction: str, kind: str, msg_id: int, seq: int, size: int,
            name: str = "", error: int | None = None) -> None:
        """One whole Resource Manager RPC message (before fragmentation / after reassembly).

        direction: "recv" (to the RM) or "send"; kind: request, reply or notification.
        """
        record = {"t": round(time.perf_counter() - self.t0, 6), "event": "rpc",
                  "dir": direction, "type": kind, "msg_id": msg_id, "name": name, "seq": seq,
                  "size": size}
        if error is not None:
            record["error"] = error
        self._emit(record)

    def format_recent(self, n: int = 10) -> str:
        lines = []
        for r in self.records()[-n:]:
            if "event" in r:
                lines.append(f"  {r['t']:10.6f}  event {r['event']}")
                continue
            args = " ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
                            for k, v in r["args"].items())
            res = " ".join(f"{k}={v:#x}" if isinstance(v, int) and v >= 0 else f"{k}={v}"
                           for k, v in r["results"].items())
            lines.append(f"  {r['t']:10.6f}  cpu{r['cpu']} {r['conduit']} {r['call']}({args})"
                         f" -> {res}")
        return "\n".join(lines) or "  (none)"

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
