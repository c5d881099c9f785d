"""`python -m guest.build_all`: build every guest-side artefact into the cache (idempotent)."""
from __future__ import annotations

import sys

from . import build, kmod


def main() -> int:
    try:
        shim = build.build_shim()
        initramfs = build.build_base_initramfs()
        payloads = [build.build_payload(name) for name in build.payload_names()]
        module = kmod.build_rmtest()        # the `linux` suite's module (Debian arm64 headers)
    except build.AssetError as err:
        print(f"setup: {err}", file=sys.stderr)
        return 1
    print(f"setup: shim {shim.binary}, initramfs {initramfs}, {len(payloads)} payloads, "
          f"module {module.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
