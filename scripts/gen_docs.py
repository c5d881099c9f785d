"""Regenerates the parts of docs/ that come from code (the hypercall table of docs/abi.md).

Run `scripts/gen-docs`; tests/test_docs.py fails when the committed docs are stale.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gunyah_el2.calls import markdown_table  # noqa: E402

BEGIN, END = "<!-- BEGIN generated hypercall table -->", "<!-- END generated hypercall table -->"
ABI_DOC = REPO / "docs" / "abi.md"


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    note = ("Generated from `gunyah_el2/calls.py` by `scripts/gen-docs`; the same rows drive "
            "dispatch and the trace's decoding.\n\n")
    return f"{head}{BEGIN}\n{note}{markdown_table()}{END}{tail}"


def main() -> int:
    text = ABI_DOC.read_text()
    new = render(text)
    if new != text:
        ABI_DOC.write_text(new)
        print(f"updated {ABI_DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
