"""Checks a DTB against the Gunyah binding with dtschema (``dt-validate``).

The binding comes from the project (``dts/bindings/<abi>``, written from the binding's facts)
or from a kernel tree's ``Documentation/devicetree/bindings``: then only that tree's Gunyah
binding files are used, which is the real use: checking a patched binding against the DT the
hypervisor provides.  Validation is limited to Gunyah schemas (the rest of QEMU's DT is not
this tool's business), and a DT whose Gunyah nodes match no schema at all fails, so a missing
or misspelt compatible cannot pass silently.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import fdt

BINDINGS_DIR = Path(__file__).resolve().parent / "bindings"


@dataclass
class Report:
    ok: bool
    summary: str
    messages: list[str] = field(default_factory=list)


def _dt_validate() -> str:
    exe = Path(sys.executable).parent / "dt-validate"
    if exe.exists():
        return str(exe)
    found = shutil.which("dt-validate")
    if found is None:
        raise FileNotFoundError("dt-validate (PyPI dtschema) not found: run scripts/setup")
    return found


def gunyah_binding_files(tree: Path) -> list[Path]:
    """The YAML binding files of a bindings tree that describe Gunyah nodes."""
    return sorted(p for p in tree.rglob("*.yaml")
                  if "gunyah" in p.name or "gunyah-hypervisor" in p.read_text(errors="replace"))


def gunyah_nodes(blob: bytes) -> list[str]:
    tree = fdt.parse_dtb(blob)
    found = []
    for path, _nodes, props in tree.walk():
        for prop in props:
            if prop.name == "compatible" and any("gunyah" in str(c) for c in prop):
                found.append(path)
    return found


def validate(blob: bytes, *, abi: str, bindings: Path | None = None) -> Report:
    nodes = gunyah_nodes(blob)
    if not nodes:
        return Report(False, "no node with a Gunyah compatible in the DT",
                      ["the DT has no /hypervisor node (or its compatible has no 'gunyah')"])
    with tempfile.TemporaryDirectory(prefix="gsim-dtschema-") as tmp:
        schema_dir = Path(tmp) / "schemas"
        if bindings is None:
            shutil.copytree(BINDINGS_DIR / abi, schema_dir)
            source = f"gunyah-sim's {abi} binding"
        else:
            files = gunyah_binding_files(bindings)
            if not files:
                return Report(False, f"no Gunyah binding under {bindings}")
            for f in files:
                target = schema_dir / f.relative_to(bindings)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
            source = f"{len(files)} Gunyah binding file(s) from {bindings}"
        dtb = Path(tmp) / "guest.dtb"
        dtb.write_bytes(blob)
        proc = subprocess.run([_dt_validate(), "-m", "-l", "gunyah", "-s", str(schema_dir),
                               str(dtb)], capture_output=True, text=True)
    lines = [line.replace(str(dtb), "guest.dtb").replace(tmp + "/", "")
             for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    unmatched = [line for line in lines if "failed to match any schema" in line
                 and "gunyah" in line]
    problems = [line for line in lines if "failed to match any schema" not in line
                or "gunyah" in line]
    ok = proc.returncode == 0 and not problems and not unmatched
    return Report(ok, f"{len(nodes)} Gunyah node(s) against {source}", problems)
