"""Out-of-tree kernel modules for the guest (guest/modules/<name>), built on this x86_64 host.

The guest runs Debian's arm64 kernel, so its modules are built against Debian's own headers for
exactly that kernel build: linux-headers-<release>:arm64 and linux-headers-<abi>-common (the
headers) plus linux-kbuild-<major.minor>:amd64 (kbuild's host tools, which run here), all at the
kernel package's Debian version.  They are fetched with `apt-get download` into the cache and
unpacked with `dpkg-deb -x` into ~/.cache/gunyah-sim/headers; nothing is installed on the host.
The unpacked tree refers to itself by absolute /usr/src paths in one place (the flavour
Makefile's include), which is rewritten to point into the cache.

Builds run in a copy of the module's sources in the cache (kbuild writes its outputs next to
the sources), never in the git tree.  Everything is idempotent: a second call only compares
timestamps.
"""
from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .build import CROSS, GUEST_DIR, AssetError, _newer, cache_dir, default_kernel

MODULES_DIR = GUEST_DIR / "modules"
RMTEST = "gsim_rmtest"
SOURCE_SUFFIXES = (".c", ".h", ".S")


@contextmanager
def _locked(name: str):
    """Serialise builds between processes (setup, tests and benchmarks may run together)."""
    lock_dir = cache_dir() / "build"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- which kernel ----------------------------------------------------------------------------
def kernel_release(image: Path | None = None) -> str:
    """uname -r of the cached kernel, from its file name (vmlinuz-6.1.0-56-arm64)."""
    image = image or default_kernel()
    return image.name.removeprefix("vmlinuz-")


def kernel_debian_version(image: Path | None = None) -> str:
    """The Debian package version of the cached kernel (e.g. 6.1.192-2).

    From the downloaded .deb's name when scripts/setup kept it, else from the version banner
    inside the image ("... SMP Debian 6.1.192-2 (date)").
    """
    image = image or default_kernel()
    release = kernel_release(image)
    debs = sorted((cache_dir() / "debs").glob(f"linux-image-{release}_*_arm64.deb"))
    if debs:
        return debs[-1].name.split("_")[1]
    data = image.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    m = re.search(rb"Linux version " + re.escape(release.encode()) + rb" .*? Debian (\S+) ",
                  data)
    if not m:
        raise AssetError(f"cannot tell the Debian version of {image}: no 'Debian <version>' "
                         "in its banner and no kernel .deb in the cache")
    return m.group(1).decode()


def _packages(release: str, version: str) -> list[str]:
    abiname, _, _flavour = release.rpartition("-")          # 6.1.0-56, arm64
    major_minor = ".".join(release.split(".")[:2])           # 6.1
    return [f"linux-headers-{release}:arm64={version}",
            f"linux-headers-{abiname}-common={version}",
            f"linux-kbuild-{major_minor}:amd64={version}"]


# --- headers ---------------------------------------------------------------------------------
def _apt_download(specs: list[str], dest: Path) -> None:
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", "-q", *specs], cwd=dest,
                              capture_output=True, text=True)

    proc = attempt()
    if proc.returncode != 0:                 # stale package lists: update once and retry
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-qq"], capture_output=True)
        proc = attempt()
    if proc.returncode != 0:
        raise AssetError(f"apt-get download {' '.join(specs)} failed (the kernel's exact "
                         f"version must still be in the archive):\n{proc.stderr.strip()}")


def headers_dir(image: Path | None = None) -> Path:
    """Kbuild directory of the cached kernel's headers (downloaded and unpacked if needed)."""
    release = kernel_release(image)
    version = kernel_debian_version(image)
    root = cache_dir() / "headers" / f"{release}_{version}"
    kdir = root / "usr" / "src" / f"linux-headers-{release}"
    stamp = root / ".complete"
    if stamp.exists():
        return kdir
    with _locked("headers"):
        if stamp.exists():
            return kdir
        debs_dir = cache_dir() / "debs"
        debs_dir.mkdir(parents=True, exist_ok=True)
        specs = _packages(release, version)
        wanted = {}
        for spec in specs:
            name = spec.split(":")[0].split("=")[0]
            found = sorted(debs_dir.glob(f"{name}_{version}_*.deb"))
            wanted[spec] = found[-1] if found else None
        missing = [s for s, deb in wanted.items() if deb is None]
        if missing:
            with tempfile.TemporaryDirectory(prefix="gsim-debs-") as tmp:
                _apt_download(missing, Path(tmp))
                for deb in Path(tmp).glob("*.deb"):
                    shutil.move(str(deb), debs_dir / deb.name)
            for spec in missing:
                name = spec.split(":")[0].split("=")[0]
                wanted[spec] = sorted(debs_dir.glob(f"{name}_{version}_*.deb"))[-1]
        staging = root.with_name(root.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for deb in wanted.values():
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise AssetError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")
        _fix_paths(staging, root, release)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        stamp.write_text(f"{release} {version}\n")
    return kdir


def _fix_paths(staging: Path, final_root: Path, release: str) -> None:
    """Make the unpacked tree self-contained: absolute /usr/src and /usr/lib references and
    symlinks get the cache prefix (relative symlinks already stay inside the tree)."""
    for makefile in (staging / "usr" / "src").glob("linux-headers-*/Makefile"):
        text = makefile.read_text()
        fixed = re.sub(r"(?m)^(include\s+)/usr/", lambda m: f"{m.group(1)}{final_root}/usr/",
                       text)
        if fixed != text:
            makefile.write_text(fixed)
    for link in staging.rglob("*"):
        if link.is_symlink():
            target = os.readlink(link)
            if target.startswith("/usr/"):
                link.unlink()
                link.symlink_to(f"{final_root}{target}")
    kdir = staging / "usr" / "src" / f"linux-headers-{release}"
    if not (kdir / "Makefile").exists() or not (kdir / "scripts").resolve().is_dir():
        raise AssetError(f"unexpected layout of the unpacked headers in {staging}")


# --- modules ---------------------------------------------------------------------------------
def module_sources(name: str) -> list[Path]:
    src = MODULES_DIR / name
    files = [p for p in sorted(src.iterdir()) if p.suffix in SOURCE_SUFFIXES
             or p.name in ("Makefile", "Kbuild")]
    if not files:
        raise AssetError(f"no module sources in {src}")
    return files


def build_module(name: str) -> Path:
    """Build guest/modules/<name> for the cached kernel; returns the .ko (in the cache)."""
    kdir = headers_dir()
    out = cache_dir() / "build" / "modules" / name
    ko = out / f"{name}.ko"
    sources = module_sources(name)
    stamp = kdir.parent.parent.parent / ".complete"
    if _newer(ko, *sources, stamp):
        return ko
    cc = f"{CROSS}gcc-12"
    for tool in (cc, "make"):
        if shutil.which(tool) is None:
            raise AssetError(f"{tool} not found: run scripts/setup (gcc-aarch64-linux-gnu, make)")
    with _locked(f"module-{name}"):
        if _newer(ko, *sources, stamp):
            return ko
        out.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copy2(src, out / src.name)
        proc = subprocess.run(["make", "-s", "-C", str(kdir), f"M={out}", "ARCH=arm64",
                               f"CROSS_COMPILE={CROSS}", "modules"],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not ko.exists():
            raise AssetError(f"building module {name} failed:\n{proc.stdout}{proc.stderr}")
        ko.touch()          # newer than the sources even when kbuild found nothing to do
    return ko


def build_rmtest() -> Path:
    """guest/modules/gsim_rmtest: the RM RPC check the `linux` conformance suite loads."""
    return build_module(RMTEST)
