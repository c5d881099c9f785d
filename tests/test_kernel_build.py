"""`gunyah-sim kernel build`: the fragment checking logic and patch handling (fast, on fake trees),
and end to end: Debian's linux-source-6.1 built with the project's fragment, then booted."""
import argparse
import os
import shutil
import subprocess
import re
import time
from pathlib import Path

import pytest

from conftest import REPO, gunyah_sim
from guest.build import cache_dir
from qemu_bridge import exitcodes
from qemu_bridge import kernelcmd as kc

KCONFIG = """\
config GUNYAH
\ttristate "Gunyah drivers"
\tdepends on ARM64
\tdepends on MAILBOX
\thelp
\t  Say Y.

\t  depends on NOT_A_DEPENDENCY (help text, not a dependency)

if GUNYAH
config GUNYAH_VM_MANAGER
\ttristate "VM manager"
\tdepends on GUNYAH_RESOURCE_MANAGER && \\
\t\t   EVENTFD
endif

menu "A menu"
\tdepends on SOMETHING_ELSE

config GUNYAH_RESOURCE_MANAGER
\ttristate
endmenu

config SAMPLE_GUNYAH
\tbool "Example VMM"
\tdepends on CC_CAN_LINK && GUNYAH_VM_MANAGER
"""

FRAGMENT = """\
# a comment mentioning GUNYAH_IRQFD
CONFIG_ARM64=y
CONFIG_MAILBOX=y
CONFIG_EVENTFD=y
# CONFIG_BLOCK is not set
CONFIG_LOCALVERSION="-x"
CONFIG_GUNYAH=y
CONFIG_GUNYAH_RESOURCE_MANAGER=y
CONFIG_GUNYAH_VM_MANAGER=y
CONFIG_GUNYAH_IRQFD=y
CONFIG_RENAMED_AWAY=y
# gunyah-sim: optional
CONFIG_SAMPLE_GUNYAH=y
"""


def fake_tree(root: Path) -> Path:
    (root / "drivers" / "virt" / "gunyah").mkdir(parents=True)
    (root / "drivers" / "virt" / "gunyah" / "Kconfig").write_text(KCONFIG)
    (root / "arch" / "arm64").mkdir(parents=True)
    (root / "arch" / "arm64" / "Kconfig").write_text("config ARM64\n\tdef_bool y\n")
    (root / "arch" / "x86").mkdir(parents=True)
    (root / "arch" / "x86" / "Kconfig").write_text("config RENAMED_AWAY\n\tbool\n")
    (root / "init").mkdir()
    (root / "init" / "Kconfig").write_text(
        'config EVENTFD\n\tbool "eventfd"\nconfig BLOCK\n\tbool "block"\n'
        'config LOCALVERSION\n\tstring "local"\nconfig CC_CAN_LINK\n\tbool\n')
    (root / "drivers" / "mailbox").mkdir(parents=True)
    (root / "drivers" / "mailbox" / "Kconfig").write_text('menuconfig MAILBOX\n\tbool "Mailbox"\n')
    return root


def test_fragment_parsing_marks_optional_and_not_set():
    reqs = kc.parse_fragment(FRAGMENT, "f.config")
    by_name = {r.name: r for r in reqs}
    assert by_name["BLOCK"].value == "n"
    assert by_name["LOCALVERSION"].value == '"-x"'
    assert by_name["SAMPLE_GUNYAH"].optional and not by_name["GUNYAH"].optional
    assert by_name["GUNYAH"].source == "f.config:7"
    assert "GUNYAH_IRQFD" in by_name and len(reqs) == 11       # comments are not requests
    merged = kc.merge_requests(reqs, kc.parse_fragment("# CONFIG_GUNYAH is not set\n", "g"))
    assert merged["GUNYAH"].value == "n" and merged["GUNYAH"].source == "g:1"


def test_kconfig_scan_keeps_depends_and_ifs_and_skips_help_and_other_arches(tmp_path):
    syms = kc.scan_kconfig(fake_tree(tmp_path))
    assert syms["GUNYAH"].depends == ["ARM64", "MAILBOX"]          # not the help text line
    assert syms["GUNYAH_VM_MANAGER"].depends == ["GUNYAH", "GUNYAH_RESOURCE_MANAGER && EVENTFD"]
    assert syms["GUNYAH_RESOURCE_MANAGER"].depends == []           # menu deps are not kept
    assert "RENAMED_AWAY" not in syms                              # x86 only
    assert syms["MAILBOX"].where == ["drivers/mailbox/Kconfig:1"]


def test_check_reports_unmet_dependencies_missing_and_optional(tmp_path):
    syms = kc.scan_kconfig(fake_tree(tmp_path))
    requests = kc.merge_requests(kc.parse_fragment(FRAGMENT, "f.config"))
    config = kc.parse_config("CONFIG_ARM64=y\nCONFIG_MAILBOX=y\nCONFIG_GUNYAH=y\n"
                             "# CONFIG_EVENTFD is not set\nCONFIG_LOCALVERSION=\"-x\"\n")
    report = kc.check_config(requests, config, syms)
    assert not report.ok
    errors = "\n".join(report.errors)
    assert "GUNYAH_VM_MANAGER requested =y (f.config:9) but is not set" in errors
    assert "not set there: GUNYAH_RESOURCE_MANAGER, EVENTFD" in errors
    assert "EVENTFD requested =y" in errors
    # an invisible symbol nothing selected: dependencies met, still an error
    assert "GUNYAH_RESOURCE_MANAGER requested =y" in errors
    assert len(report.errors) == 3                    # BLOCK=n and LOCALVERSION are as asked
    assert report.not_in_tree == ["GUNYAH_IRQFD"]
    warnings = "\n".join(report.warnings)
    assert "RENAMED_AWAY (f.config:11) is not in this tree" in warnings
    assert "SAMPLE_GUNYAH" in warnings and "CC_CAN_LINK" in warnings
    assert report.gunyah_set == ["GUNYAH"]
    text = report.format()
    assert text.startswith("error: ") and "Gunyah options not in this tree: GUNYAH_IRQFD" in text


def test_check_passes_when_everything_is_set_and_tree_lacks_gunyah(tmp_path):
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "Kconfig").write_text('config EVENTFD\n\tbool "eventfd"\n')
    syms = kc.scan_kconfig(tmp_path)
    requests = kc.merge_requests(kc.parse_fragment(
        "CONFIG_EVENTFD=y\nCONFIG_GUNYAH=y\nCONFIG_GUNYAH_VM_MANAGER=y\n"))
    report = kc.check_config(requests, {"EVENTFD": "y"}, syms)
    assert report.ok and report.warnings == []
    assert report.not_in_tree == ["GUNYAH", "GUNYAH_VM_MANAGER"]
    assert "none of the Gunyah options" in report.format()


def test_kconfig_select_warnings_are_picked_from_the_log():
    log = ("WARNING: unmet direct dependencies detected for QCOM_SCM\n"
           "  Depends on [n]: ARM64 [=y] && HAVE_ARM_SMCCC [=n]\n"
           "  Selected by [y]:\n  - GUNYAH_QCOM_PLATFORM [=y]\n#\n")
    (w,) = kc.kconfig_warnings(log)
    assert w.startswith("Kconfig: unmet direct dependencies for QCOM_SCM: Depends on [n]")


def test_project_fragment_asks_for_every_gunyah_option():
    reqs = kc.merge_requests(kc.parse_fragment(kc.DEFAULT_FRAGMENT.read_text()))
    for name in ("GUNYAH", "GUNYAH_RESORUCE_MANAGER", "GUNYAH_RESOURCE_MANAGER",
                 "GUNYAH_VM_MANAGER", "GUNYAH_MESSAGE_QUEUES", "MAILBOX", "GUNYAH_PLATFORM_HOOKS",
                 "GUNYAH_QCOM_PLATFORM", "GUNYAH_IRQFD", "GUNYAH_IOEVENTFD", "SAMPLE_GUNYAH",
                 "SERIAL_AMBA_PL011_CONSOLE", "BLK_DEV_INITRD", "ARM_PSCI_FW", "ARM_GIC_V3",
                 "DEVTMPFS", "BINFMT_SCRIPT"):
        assert reqs[name].value == "y", name
    assert [r.name for r in reqs.values() if r.optional] == ["SAMPLE_GUNYAH"]
    # merge_config.sh greps for full option names: comments must not contain any
    for line in kc.DEFAULT_FRAGMENT.read_text().splitlines():
        if line.startswith("#") and "CONFIG_" in line:
            assert line.endswith(" is not set"), line


def _builder(src: Path, out: Path, patches: Path) -> kc.Builder:
    args = argparse.Namespace(src=src, output=out, config=[], patches=patches, jobs=1, verbose=0)
    b = kc.Builder(args)
    out.mkdir(exist_ok=True)
    b.load_state()
    b.log = (out / "build.log").open("w")
    return b


def _git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


def _git_tree(tmp_path):
    """A one-file git tree with a base commit, to apply patches to."""
    src = tmp_path / "linux"
    src.mkdir()
    _git(src, "init", "-q")
    (src / "a.txt").write_text("one\n")
    _git(src, "add", "a.txt")
    _git(src, "commit", "-qm", "base")
    return src


def test_patches_git_am_once_then_skipped(tmp_path):
    src = _git_tree(tmp_path)
    (src / "a.txt").write_text("one\ntwo\n")
    _git(src, "commit", "-qam", "second")
    (tmp_path / "series").mkdir()
    _git(src, "format-patch", "-q", "-1", "-o", str(tmp_path / "series"))
    _git(src, "reset", "-q", "--hard", "HEAD~1")
    b = _builder(src, tmp_path / "out", tmp_path / "series")
    assert b.is_git()
    b.apply_patches()
    assert (src / "a.txt").read_text() == "one\ntwo\n"
    assert "second" in _git(src, "log", "--oneline", "-1")
    b.apply_patches()                                     # a rerun does not apply them twice
    assert _git(src, "rev-list", "--count", "HEAD").strip() == "2"
    assert "already applied" in b.log_text()


def test_patches_failing_git_am_is_aborted(tmp_path):
    src = _git_tree(tmp_path)
    bad = tmp_path / "bad.mbox"
    bad.write_text("From 0 Mon Sep 17 00:00:00 2001\nFrom: x <x@x>\nSubject: [PATCH] bad\n\n---\n"
                   "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-nothing like this\n+two\n")
    b = _builder(src, tmp_path / "out", bad)
    with pytest.raises(kc.BuildError, match="git am failed"):
        b.apply_patches()
    assert not (src / ".git" / "rebase-apply").exists()
    assert (src / "a.txt").read_text() == "one\n"


def test_patches_outside_git_use_patch_p1(tmp_path):
    src = tmp_path / "linux"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    p = tmp_path / "p.patch"
    p.write_text("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1,2 @@\n one\n+two\n")
    b = _builder(src, tmp_path / "out", p)
    assert not b.is_git()
    b.apply_patches()
    b.apply_patches()
    assert (src / "a.txt").read_text() == "one\ntwo\n"


def test_bad_command_lines_exit_2(tmp_path):
    p = gunyah_sim("kernel", "build", str(tmp_path / "nope"))
    assert p.returncode == exitcodes.USAGE and "is not a directory" in p.stderr
    p = gunyah_sim("kernel", "build", str(fake_tree(tmp_path / "t")))
    assert p.returncode == exitcodes.USAGE and "does not look like a Linux source tree" in p.stderr
    p = gunyah_sim("kernel", "build")
    assert p.returncode == exitcodes.USAGE


# ---------------------------------------------------------------------------------------------
# End to end: Debian's linux-source-6.1 (a tree without the Gunyah series).

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")


@pytest.fixture(scope="module")
def linux_source() -> Path:
    """scripts/setup --kernel-build (idempotent), then the tarball unpacked once into the cache."""
    setup = subprocess.run([str(REPO / "scripts" / "setup"), "--kernel-build"],
                           capture_output=True, text=True, timeout=1200)
    assert setup.returncode == 0, setup.stderr
    src = cache_dir() / "linux-source-6.1"
    if not (src / "Makefile").is_file():
        tmp = cache_dir() / "linux-source-6.1.unpacking"
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(tmp)], check=True)
        (tmp / "linux-source-6.1").rename(src)
        tmp.rmdir()
    return src


@pytest.fixture(scope="module")
def built_kernel(linux_source):
    """The build, twice: the first is cold or incremental, the second has nothing to do."""
    out = cache_dir() / "kbuild-6.1"                  # kept: reruns are incremental
    started = time.monotonic()
    first = gunyah_sim("kernel", "build", str(linux_source), "-o", str(out), "-j2", timeout=3600)
    first_s = time.monotonic() - started
    started = time.monotonic()
    again = gunyah_sim("kernel", "build", str(linux_source), "-o", str(out), "-j2", timeout=600)
    again_s = time.monotonic() - started
    again_log = (out / "build.log").read_text(errors="replace")    # the rebuild's own log
    print(f"\nkernel build: {first_s:.0f} s, then unchanged: {again_s:.0f} s")
    return out, first, first_s, again, again_log


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_build_debian_linux_source(built_kernel):
    out, p, first_s, again, again_log = built_kernel
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Gunyah options not in this tree: GUNYAH " in p.stderr     # reported, not an error
    for name in ("Image", "vmlinux", "System.map", ".config", "build.log"):
        assert (out / name).is_file(), name
        assert str(out / name) in p.stdout
    config = kc.parse_config((out / ".config").read_text())
    for name in ("SERIAL_AMBA_PL011_CONSOLE", "BLK_DEV_INITRD", "ARM_PSCI_FW", "ARM_GIC_V3",
                 "DEVTMPFS", "BINFMT_ELF", "BINFMT_SCRIPT", "TMPFS", "PROC_FS", "SYSFS",
                 "MAILBOX", "VIRT_DRIVERS"):
        assert config.get(name) == "y", name
    assert config.get("MODULES", "n") == "n"             # allnoconfig base: a minimal kernel
    assert config.get("LOCALVERSION") == '"-gunyah-sim"'
    assert again.returncode == 0, again.stderr[-3000:]
    # incremental: an unchanged tree recompiles (almost) nothing (init/version.o, at most)
    compiled = [line for line in again_log.splitlines() if re.match(r"\s+CC\s", line)]
    assert len(compiled) <= 3, compiled[:10]


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_built_kernel_boots(built_kernel, no_leftovers):
    out, p, *_ = built_kernel
    assert p.returncode == 0, p.stderr[-3000:]
    release = (out / "include" / "config" / "kernel.release").read_text().strip()
    assert release.endswith("-gunyah-sim")
    boot = gunyah_sim("run", "--kernel", str(out / "Image"), "--exec", "uname -r",
                      "--timeout", "120")
    assert boot.returncode == 0, boot.stderr
    assert release in [line.strip() for line in boot.stdout.splitlines()]


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_unmet_dependency_stops_before_make(linux_source, tmp_path):
    frag = tmp_path / "broken.config"
    frag.write_text("# CONFIG_SERIAL_AMBA_PL011 is not set\n")
    out = cache_dir() / "kbuild-6.1-broken-config"
    p = gunyah_sim("kernel", "build", str(linux_source), "-o", str(out), "--config", str(frag),
                   timeout=600)
    assert p.returncode == exitcodes.FAILURE, p.stderr
    assert "error: SERIAL_AMBA_PL011_CONSOLE requested =y" in p.stderr
    assert "not set there: SERIAL_AMBA_PL011" in p.stderr
    assert "not building" in p.stderr
    assert not (out / "vmlinux").exists()


def test_failing_step_prints_the_log_tail_and_exits_1(tmp_path):
    missing = [t for t in kc.PREREQUISITES if not shutil.which(t)]
    if missing:
        pytest.skip(f"kernel build tools missing: {missing} (scripts/setup --kernel-build)")
    src = fake_tree(tmp_path / "linux")
    (src / "Makefile").write_text("all:\n")
    (src / "Kconfig").write_text('source "init/Kconfig"\n')
    (src / "scripts" / "kconfig").mkdir(parents=True)
    (src / "scripts" / "kconfig" / "merge_config.sh").write_text("echo boom-from-kconfig\nexit 1\n")
    out = tmp_path / "out"
    p = gunyah_sim("kernel", "build", str(src), "-o", str(out))
    assert p.returncode == exitcodes.FAILURE, p.stderr
    assert "--- last lines of" in p.stderr and "boom-from-kconfig" in p.stderr
    assert "merge_config.sh failed" in p.stderr
    assert "boom-from-kconfig" in (out / "build.log").read_text()
