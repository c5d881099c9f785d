"""Builds what runs inside QEMU: the EL2 shim and the busybox initramfs.

Inputs come from Debian packages that ``scripts/setup`` downloads into the cache (never into
git): the arm64 kernel package and busybox-static for arm64.  Outputs go to the cache too.
Every function is idempotent and rebuilds only when an input is newer than its output.
"""
from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qemu_bridge import mailbox

GUEST_DIR = Path(__file__).resolve().parent
SHIM_SOURCE = GUEST_DIR / "shim" / "shim.S"
SHIM_LDS = GUEST_DIR / "shim" / "shim.ld"
INIT_SCRIPT = GUEST_DIR / "initramfs" / "init"
CROSS = "aarch64-linux-gnu-"


def cache_dir() -> Path:
    """Where downloads and build outputs live: $GUNYAH_SIM_CACHE or ~/.cache/gunyah-sim."""
    env = os.environ.get("GUNYAH_SIM_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "gunyah-sim"
    return base


class AssetError(RuntimeError):
    """A prerequisite is missing; the message says which command provides it."""


def _newer(output: Path, *inputs: Path) -> bool:
    return output.exists() and all(output.stat().st_mtime >= i.stat().st_mtime for i in inputs)


def _run(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssetError(f"{shlex.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


@dataclass(frozen=True)
class Shim:
    binary: Path
    elf: Path

    def symbol(self, name: str) -> int:
        """Address of a global symbol of the shim, read from its ELF with pyelftools."""
        from elftools.elf.elffile import ELFFile
        with self.elf.open("rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            syms = symtab.get_symbol_by_name(name) if symtab else None
        if not syms:
            raise AssetError(f"the shim has no symbol {name!r}")
        return syms[0]["st_value"]


def build_shim(out_dir: Path | None = None) -> Shim:
    """Assemble and link the EL2 shim at mailbox.SHIM_BASE; returns its raw binary and ELF."""
    out = (out_dir or cache_dir() / "build")
    out.mkdir(parents=True, exist_ok=True)
    inc = out / "mailbox.inc"
    text = mailbox.assembler_constants()
    if not inc.exists() or inc.read_text() != text:
        inc.write_text(text)
    obj, elf, binary = out / "shim.o", out / "shim.elf", out / "shim.bin"
    if not _newer(binary, SHIM_SOURCE, SHIM_LDS, inc, Path(mailbox.__file__)):
        for tool in ("as", "ld", "objcopy"):
            if shutil.which(CROSS + tool) is None:
                raise AssetError(f"{CROSS}{tool} not found: run scripts/setup "
                                 "(Debian package binutils-aarch64-linux-gnu)")
        _run([CROSS + "as", "-I", str(out), "-o", str(obj), str(SHIM_SOURCE)])
        _run([CROSS + "ld", "-T", str(SHIM_LDS), f"--defsym=SHIM_BASE={mailbox.SHIM_BASE:#x}",
              "-o", str(elf), str(obj)])
        _run([CROSS + "objcopy", "-O", "binary", str(elf), str(binary)])
    return Shim(binary=binary, elf=elf)


# --- initramfs ------------------------------------------------------------------------------

def busybox_path() -> Path:
    path = cache_dir() / "busybox" / "bin" / "busybox"
    if not path.exists():
        raise AssetError(f"{path} missing: run scripts/setup (Debian busybox-static:arm64)")
    return path


def default_kernel() -> Path:
    """The Debian arm64 kernel Image that scripts/setup unpacked."""
    images = sorted((cache_dir() / "kernel" / "boot").glob("vmlinuz-*"))
    if not images:
        raise AssetError("no Debian arm64 kernel in the cache: run scripts/setup")
    return images[-1]


def _cpio(staging: Path, output: Path) -> None:
    """Pack a directory as a newc cpio archive with Debian's cpio (owner root)."""
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=staging, check=True,
                           capture_output=True).stdout
    with output.open("wb") as f:
        proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                              cwd=staging, input=names, stdout=f, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise AssetError(f"cpio failed: {proc.stderr.decode(errors='replace')}")


def build_base_initramfs(out_dir: Path | None = None) -> Path:
    """busybox + our /init, packed once and cached."""
    out = (out_dir or cache_dir() / "build")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "initramfs-base.cpio"
    busybox = busybox_path()
    if _newer(target, busybox, INIT_SCRIPT):
        return target
    with tempfile.TemporaryDirectory(prefix="gsim-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
                  "gsim", "root", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        shutil.copy2(INIT_SCRIPT, root / "init")
        (root / "init").chmod(0o755)
        _cpio(root, target)
    return target


def build_run_initramfs(base: Path, output: Path, *, command: str | None, token: str,
                        overlays: list[Path] = ()) -> Path:
    """The per-run archive: the base archive with the run's command and overlays appended.

    Linux unpacks concatenated newc archives in order, so later files win; that is how an
    overlay adds or replaces files without rebuilding the base.
    """
    with tempfile.TemporaryDirectory(prefix="gsim-run-") as tmp:
        root = Path(tmp)
        (root / "gsim").mkdir()
        conf = f"GSIM_TOKEN={token}\n"
        (root / "gsim" / "run.conf").write_text(conf)
        if command is not None:
            (root / "gsim" / "cmd").write_text(command + "\n")
        for overlay in overlays:
            add_overlay(root, overlay)
        extra = output.with_suffix(".extra.cpio")
        _cpio(root, extra)
        with output.open("wb") as out, base.open("rb") as b, extra.open("rb") as e:
            shutil.copyfileobj(b, out)
            shutil.copyfileobj(e, out)
        extra.unlink()
    return output


def add_overlay(root: Path, overlay: Path) -> None:
    """Copy a directory tree or unpack a tar archive into the staging root."""
    if overlay.is_dir():
        shutil.copytree(overlay, root, symlinks=True, dirs_exist_ok=True)
    elif tarfile.is_tarfile(overlay):
        with tarfile.open(overlay) as tar:
            tar.extractall(root, filter="tar")
    else:
        raise AssetError(f"overlay {overlay} is neither a directory nor a tar archive")


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A small tar archive in memory (used by tests to make overlays)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
