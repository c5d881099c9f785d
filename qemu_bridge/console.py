"""The guest's serial console (QEMU's PL011 on stdio, read through pexpect).

Streams what the guest prints to the user's terminal and to a log file, keeps the tail for
failure reports, and watches for the markers that end a run.
"""
from __future__ import annotations

import re
import sys
import threading
from collections import deque

PANIC_PATTERNS = [
    r"Kernel panic - not syncing[^\r\n]*",
]


class ConsoleSink:
    """pexpect's logfile_read: a file-like object that fans the console out."""

    def __init__(self, stream=None, log_path: str | None = None, keep_lines: int = 200):
        self.stream = stream
        self.log = open(log_path, "w", encoding="utf-8", errors="replace") if log_path else None
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self._partial = ""
        self._aside: list[str] = []          # whole lines from elsewhere (VM consoles)
        self._lock = threading.Lock()

    def _emit(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()
        if self.log is not None:
            self.log.write(text)

    def write(self, text: str) -> None:
        """The primary's console, as pexpect reads it."""
        with self._lock:
            if self._aside and "\n" in text:      # let waiting VM lines in at a line break
                cut = text.index("\n") + 1
                self._write_primary(text[:cut])
                self._flush_aside()
                text = text[cut:]
            self._write_primary(text)
            if not self._partial:
                self._flush_aside()

    def _write_primary(self, text: str) -> None:
        self._emit(text)
        text = self._partial + text.replace("\r", "")
        *complete, self._partial = text.split("\n")
        self.lines.extend(complete)

    def write_line(self, line: str) -> None:
        """A whole line from another source (a VM's console): never inside a primary line."""
        with self._lock:
            self._aside.append(line)
            if not self._partial:
                self._flush_aside()

    def _flush_aside(self) -> None:
        for line in self._aside:
            self._emit(line + "\n")
            self.lines.append(line)
        self._aside.clear()

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def tail(self, n: int = 20) -> list[str]:
        lines = list(self.lines)
        if self._partial:
            lines.append(self._partial)
        return lines[-n:]

    def close(self) -> None:
        with self._lock:
            if self._aside:
                self._emit("\n" if self._partial else "")
                self._flush_aside()
        if self.log is not None:
            self.log.close()
            self.log = None


def exit_marker(token: str) -> str:
    return rf"GSIM-EXIT-{re.escape(token)} status=(\d+)"


def ready_marker(token: str) -> str:
    return rf"GSIM-INIT-READY-{re.escape(token)}"


def stdout_sink(quiet: bool, log_path: str | None) -> ConsoleSink:
    return ConsoleSink(None if quiet else sys.stdout, log_path)
