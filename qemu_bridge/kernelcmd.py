"""`gunyah-sim kernel build`: an arm64 Image from a Linux tree, configured with the project's
fragment (guest/kernel/gunyah-sim.config) on top of allnoconfig, cross-compiled with Debian's
gcc-aarch64-linux-gnu out of tree (O=DIR).

Steps: apply patches (git am, or patch -p1 outside git; remembered so a rerun does not apply them
twice), configure (merge_config.sh -n, then olddefconfig), check that every requested option got
its value (the Gunyah ones above all), `make Image`.  Everything make prints goes to DIR/build.log.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import exitcodes

REPO = Path(__file__).resolve().parent.parent
FRAGMENT_DIR = REPO / "guest" / "kernel"
DEFAULT_FRAGMENT = FRAGMENT_DIR / "gunyah-sim.config"
CROSS_COMPILE = "aarch64-linux-gnu-"
OPTIONAL_MARK = "# gunyah-sim: optional"
STAMP = ".gunyah-sim-state.json"
LOG_NAME = "build.log"
TAIL_LINES = 40
# Host tools kbuild needs for an arm64 Image (package names for the message).
PREREQUISITES = {"make": "make", "gcc": "gcc", f"{CROSS_COMPILE}gcc": "gcc-aarch64-linux-gnu",
                 "flex": "flex", "bison": "bison", "bc": "bc", "perl": "perl"}


# ---------------------------------------------------------------------------------------------
# Config fragments, .config files and Kconfig: the checking logic (pure, unit tested).

@dataclass
class Request:
    name: str                 # without the CONFIG_ prefix
    value: str                # as written after '=', or 'n' for "# CONFIG_X is not set"
    optional: bool = False
    source: str = ""          # file:line


def parse_fragment(text: str, source: str = "fragment") -> list[Request]:
    """Options a fragment asks for, in order.  A line OPTIONAL_MARK makes the next one optional."""
    out: list[Request] = []
    optional = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line == OPTIONAL_MARK:
            optional = True
            continue
        m = re.fullmatch(r"CONFIG_([A-Za-z0-9_]+)=(.*)", line)
        if m is None:
            m2 = re.fullmatch(r"# CONFIG_([A-Za-z0-9_]+) is not set", line)
            if m2 is None:
                if not line:
                    optional = False
                continue
            name, value = m2.group(1), "n"
        else:
            name, value = m.group(1), m.group(2).strip()
        out.append(Request(name, value, optional, f"{source}:{number}"))
        optional = False
    return out


def merge_requests(*lists: list[Request]) -> dict[str, Request]:
    """Later fragments win, as with merge_config.sh."""
    merged: dict[str, Request] = {}
    for requests in lists:
        for r in requests:
            merged.pop(r.name, None)
            merged[r.name] = r
    return merged


def parse_config(text: str) -> dict[str, str]:
    """A .config as {name: value}; "is not set" lines give 'n'."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"CONFIG_([A-Za-z0-9_]+)=(.*)", line.strip())
        if m:
            values[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(r"# CONFIG_([A-Za-z0-9_]+) is not set", line.strip())
        if m:
            values[m.group(1)] = "n"
    return values


@dataclass
class Symbol:
    name: str
    where: list[str] = field(default_factory=list)      # file:line of each definition
    depends: list[str] = field(default_factory=list)    # "depends on" and enclosing "if" exprs


_ENTRY_END = re.compile(r"(menu|endmenu|choice|endchoice|comment|source|rsource|osource|"
                        r"orsource|mainmenu|if|endif)\b")


def kconfig_files(src: Path, arch: str = "arm64") -> list[Path]:
    """Kconfig files of a tree that matter for ARCH (other architectures' files are skipped)."""
    files = []
    for path in src.rglob("Kconfig*"):
        rel = path.relative_to(src).parts
        if rel[0] in ("Documentation", "tools") or (rel[0] == "arch" and len(rel) > 2
                                                     and rel[1] != arch):
            continue
        if path.is_file() and not path.name.endswith((".rej", ".orig", "~")):
            files.append(path)
    return sorted(files)


def _logical_lines(text: str):
    """(first line number, line) with backslash continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        yield start, pending + raw
        pending = ""
    if pending:
        yield start, pending


def scan_kconfig(src: Path, arch: str = "arm64") -> dict[str, Symbol]:
    """The symbols a tree defines for ARCH, with the dependencies written next to them.

    This is a reader for reporting, not a Kconfig implementation: it keeps each entry's own
    "depends on" lines and the "if" blocks around it in the same file, and ignores menus'
    dependencies and visibility."""
    symbols: dict[str, Symbol] = {}
    for path in kconfig_files(src, arch):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        rel = path.relative_to(src).as_posix()
        ifs: list[str] = []
        current: Symbol | None = None
        in_help = False
        for number, raw in _logical_lines(text):
            stripped = raw.strip()
            if in_help:
                if not stripped or raw[:1] in (" ", "\t"):
                    continue
                in_help = False
            if not stripped or stripped.startswith("#"):
                continue
            m = re.match(r"(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", stripped)
            if m:
                current = symbols.setdefault(m.group(1), Symbol(m.group(1)))
                current.where.append(f"{rel}:{number}")
                current.depends.extend(e for e in ifs if e not in current.depends)
                continue
            m = re.match(r"if\s+(.+)$", stripped)
            if m:
                ifs.append(" ".join(m.group(1).split()))
                current = None
                continue
            if stripped == "endif":
                if ifs:
                    ifs.pop()
                current = None
                continue
            if _ENTRY_END.match(stripped):
                current = None
                continue
            if stripped in ("help", "---help---"):
                in_help = True
                continue
            m = re.match(r"depends\s+on\s+(.+)$", stripped)
            if m and current is not None:
                expr = " ".join(m.group(1).split())
                if expr not in current.depends:
                    current.depends.append(expr)
    return symbols


def _symbols_in(expr: str) -> list[str]:
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)
    return [n for n in names if n not in ("y", "m", "n") and not n.isdigit()]


def _normal(value: str) -> str:
    value = value.strip()
    return "n" if value in ("", "n") else value


def is_gunyah(name: str) -> bool:
    return "GUNYAH" in name


def kconfig_warnings(log: str) -> list[str]:
    """Kconfig's own complaints about selects that ignore dependencies, from the configure log."""
    out = []
    for m in re.finditer(r"WARNING: unmet direct dependencies detected for (\w+)\n"
                         r"((?:  .*\n)*)", log):
        detail = " ".join(line.strip() for line in m.group(2).splitlines())
        text = f"Kconfig: unmet direct dependencies for {m.group(1)}: {detail}".strip()
        if text not in out:
            out.append(text)
    return out


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_in_tree: list[str] = field(default_factory=list)      # Gunyah options the tree lacks
    gunyah_set: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        if self.gunyah_set:
            lines.append("Gunyah options set: " + " ".join(self.gunyah_set))
        if self.not_in_tree:
            lines.append("Gunyah options not in this tree: " + " ".join(self.not_in_tree)
                         + (" (this tree has none of the Gunyah options: no Gunyah series?)"
                            if not self.gunyah_set and not any(
                                "GUNYAH" in e for e in self.errors) else ""))
        return "\n".join(lines)


def check_config(requests: dict[str, Request], config: dict[str, str],
                 symbols: dict[str, Symbol]) -> CheckReport:
    """Compare what the fragments asked for with the resulting .config.

    Requested and defined by the tree but not set as asked: an error (a warning when marked
    optional), with the dependencies that are not set.  Not defined by the tree: a Gunyah option
    is listed as "not in this tree"; any other one is a warning (renamed or removed?)."""
    report = CheckReport()
    for r in requests.values():
        want = _normal(r.value)
        got = _normal(config.get(r.name, "n"))
        if r.name not in symbols:
            if is_gunyah(r.name):
                report.not_in_tree.append(r.name)
            else:
                report.warnings.append(f"{r.name} ({r.source}) is not in this tree")
            continue
        if want == got:
            if is_gunyah(r.name) and got != "n":
                report.gunyah_set.append(r.name)
            continue
        sym = symbols[r.name]
        unmet = []
        for expr in sym.depends:
            for dep in _symbols_in(expr):
                if _normal(config.get(dep, "n")) == "n" and dep not in unmet:
                    unmet.append(dep)
        text = (f"{r.name} requested ={want} ({r.source}) but is "
                + (f"={got}" if got != "n" else "not set"))
        if sym.depends:
            text += f"; depends on: {' && '.join(f'({d})' if ' ' in d else d for d in sym.depends)}"
        if unmet:
            text += f"; not set there: {', '.join(unmet)}"
        elif want != "n":
            text += "; its dependencies look met (a choice, a select or a menu's dependency?)"
        text += f" [{sym.where[0]}]"
        (report.warnings if r.optional else report.errors).append(text)
    return report


# ---------------------------------------------------------------------------------------------
# The build.

class BuildError(Exception):
    def __init__(self, message: str, code: int = exitcodes.FAILURE, tail: bool = True):
        super().__init__(message)
        self.code = code
        self.tail = tail


def default_output(src: Path) -> Path:
    """SRC's sibling SRC-gunyah-sim-build (outside the tree, one per tree)."""
    src = src.resolve()
    return src.parent / f"{src.name}-gunyah-sim-build"


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


class Builder:
    def __init__(self, args):
        self.src: Path = args.src.resolve()
        self.out: Path = (args.output or default_output(args.src)).resolve()
        self.fragments: list[Path] = [DEFAULT_FRAGMENT, *[p.resolve() for p in args.config]]
        self.patches: Path | None = args.patches.resolve() if args.patches else None
        self.jobs: int = args.jobs
        self.verbose: int = args.verbose
        self.log = None
        self.ccache = shutil.which("ccache") is not None and not os.environ.get("GUNYAH_SIM_NO_CCACHE")
        self.state: dict = {}

    # -- helpers ------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"gunyah-sim kernel build: {text}", file=sys.stderr, flush=True)
        if self.log:
            self.log.write(f"### {text}\n")
            self.log.flush()

    def make_vars(self) -> list[str]:
        vs = ["ARCH=arm64", f"CROSS_COMPILE={CROSS_COMPILE}"]
        if self.ccache:
            vs.append(f"CC=ccache {CROSS_COMPILE}gcc")
        return vs

    def make_cmd(self, *targets: str, jobs: int = 1) -> list[str]:
        return ["make", "-C", str(self.src), f"O={self.out}", f"-j{jobs}", *self.make_vars(),
                *targets]

    def run(self, cmd: list[str], *, cwd: Path | None = None, env: dict | None = None,
            stream: bool = False) -> int:
        """Run CMD with its output appended to build.log (and shown with -v)."""
        self.log.write(f"$ {shlex.join(cmd)}\n")
        self.log.flush()
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        status_line = stream and not self.verbose and sys.stderr.isatty()
        try:
            for line in proc.stdout:
                self.log.write(line)
                if self.verbose:
                    sys.stdout.write(line)
                elif status_line and line.startswith("  "):
                    sys.stderr.write("\r\033[K" + line.strip()[:100])
            return proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            if status_line:
                sys.stderr.write("\r\033[K")
            self.log.flush()

    def log_text(self, since: int = 0) -> str:
        self.log.flush()
        with (self.out / LOG_NAME).open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def tail(self, n: int = TAIL_LINES) -> str:
        try:
            lines = (self.out / LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    # -- steps --------------------------------------------------------------------------------
    def check_args(self) -> str | None:
        if not self.src.is_dir():
            return f"{self.src} is not a directory"
        if not (self.src / "Makefile").is_file() or not (self.src / "Kconfig").is_file():
            return f"{self.src} does not look like a Linux source tree (no Makefile/Kconfig)"
        if not (self.src / "arch" / "arm64").is_dir():
            return f"{self.src} has no arch/arm64"
        for frag in self.fragments:
            if not frag.is_file():
                return f"config fragment {frag} does not exist"
        if self.patches is not None and not self.patches.exists():
            return f"{self.patches} does not exist"
        if self.patches is not None and self.patches.is_dir() and not self.patch_files():
            return f"{self.patches} holds no *.patch files"
        if self.out == self.src or self.src in self.out.parents:
            return f"the output directory must be outside the source tree ({self.out})"
        if self.jobs < 1:
            return "-j must be at least 1"
        return None

    def check_tools(self) -> str | None:
        need = dict(PREREQUISITES)
        if self.patches is not None:
            need.update({"git": "git"} if self.is_git() else {"patch": "patch"})
        missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
        if missing:
            return (f"missing {' '.join(missing)}: run scripts/setup --kernel-build "
                    f"(or apt-get install {' '.join(missing)})")
        return None

    def is_git(self) -> bool:
        if not (self.src / ".git").exists() or shutil.which("git") is None:
            return False
        top = subprocess.run(["git", "-C", str(self.src), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True)
        return top.returncode == 0 and Path(top.stdout.strip()).resolve() == self.src

    def patch_files(self) -> list[Path]:
        if self.patches.is_dir():
            return sorted(p for p in self.patches.iterdir()
                          if p.is_file() and p.suffix in (".patch", ".diff"))
        return [self.patches]

    def git_head(self) -> str:
        return subprocess.run(["git", "-C", str(self.src), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()

    def apply_patches(self) -> None:
        files = self.patch_files()
        digest = _sha(*(f.read_text(errors="replace") for f in files))
        git = self.is_git()
        done = self.state.get("patches", {})
        if done.get("digest") == digest and done.get("src") == str(self.src) and \
                (not git or done.get("head") == self.git_head()):
            self.say(f"patches from {self.patches} already applied by an earlier build; skipped")
            return
        if git:
            env = {}
            if not subprocess.run(["git", "-C", str(self.src), "config", "user.email"],
                                  capture_output=True).stdout.strip():
                env = {"GIT_COMMITTER_NAME": "gunyah-sim", "GIT_COMMITTER_EMAIL": "gunyah-sim@localhost"}
            self.say(f"git am {len(files)} file(s) from {self.patches}")
            if self.run(["git", "am", *map(str, files)], cwd=self.src, env=env) != 0:
                self.run(["git", "am", "--abort"], cwd=self.src)
                raise BuildError(f"git am failed on {self.patches} (aborted; the tree is unchanged)")
            done = {"digest": digest, "src": str(self.src), "head": self.git_head()}
        else:
            for f in files:
                self.say(f"patch -p1 < {f}")
                if self.run(["patch", "-p1", "--forward", "--batch", "-i", str(f)],
                            cwd=self.src) != 0:
                    raise BuildError(f"patch -p1 failed on {f}; earlier patches of the set stay "
                                     "applied")
            done = {"digest": digest, "src": str(self.src)}
        self.state["patches"] = done
        self.save_state()

    def requests(self) -> dict[str, Request]:
        return merge_requests(*(parse_fragment(f.read_text(), f.name) for f in self.fragments))

    def configure(self, requests: dict[str, Request], symbols: dict[str, Symbol]) -> None:
        present = sorted(n for n in requests if n in symbols)
        key = _sha("allnoconfig+fragments v1", str(self.src),
                   *(f.read_text() for f in self.fragments), *present)
        if (self.out / ".config").is_file() and self.state.get("config") == key:
            self.say("configuration unchanged: make olddefconfig")
        else:
            self.say("configuring: allnoconfig + " + " ".join(str(f) for f in self.fragments))
            merge = self.src / "scripts" / "kconfig" / "merge_config.sh"
            if not merge.is_file():
                raise BuildError(f"{merge} is missing")
            env = {"ARCH": "arm64", "CROSS_COMPILE": CROSS_COMPILE}
            # merge_config.sh runs make in its working directory, which must be the tree.
            if self.run(["sh", str(merge), "-n", "-O", str(self.out),
                         *map(str, self.fragments)], cwd=self.src, env=env) != 0:
                raise BuildError("merge_config.sh failed")
        if self.run(self.make_cmd("olddefconfig")) != 0:
            raise BuildError("make olddefconfig failed")
        self.state["config"] = key
        self.save_state()

    def build(self) -> None:
        self.say(f"make -j{self.jobs} Image" + (" (ccache)" if self.ccache else "")
                 + f"; log: {self.out / LOG_NAME}")
        if self.run(self.make_cmd("Image", jobs=self.jobs), stream=True) != 0:
            raise BuildError("make Image failed")
        shutil.copy2(self.out / "arch" / "arm64" / "boot" / "Image", self.out / "Image")

    def load_state(self) -> None:
        try:
            self.state = json.loads((self.out / STAMP).read_text())
        except (OSError, ValueError):
            self.state = {}

    def save_state(self) -> None:
        (self.out / STAMP).write_text(json.dumps(self.state, indent=1) + "\n")

    def release(self) -> str:
        try:
            return (self.out / "include" / "config" / "kernel.release").read_text().strip()
        except OSError:
            return "?"

    def main(self) -> int:
        problem = self.check_args()
        if problem:
            print(f"gunyah-sim kernel build: {problem}", file=sys.stderr)
            return exitcodes.USAGE
        problem = self.check_tools()
        if problem:
            print(f"gunyah-sim kernel build: {problem}", file=sys.stderr)
            return exitcodes.SETUP
        if not os.access(self.src, os.W_OK):
            print(f"gunyah-sim kernel build: {self.src} is not writable (kbuild and "
                  "merge_config.sh write there)", file=sys.stderr)
            return exitcodes.USAGE
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_state()
        started = time.monotonic()
        with (self.out / LOG_NAME).open("w") as self.log:
            try:
                if self.patches is not None:
                    self.apply_patches()
                requests = self.requests()
                self.log.flush()
                config_log_start = self.log.tell()
                symbols = scan_kconfig(self.src)
                self.configure(requests, symbols)
                config = parse_config((self.out / ".config").read_text())
                report = check_config(requests, config, symbols)
                report.warnings += kconfig_warnings(self.log_text(since=config_log_start))
                text = report.format()
                if text:
                    print(text, file=sys.stderr)
                    self.log.write(text + "\n")
                if not report.ok:
                    raise BuildError(f"{len(report.errors)} requested option(s) did not make it "
                                     f"into {self.out / '.config'}; not building", tail=False)
                configured = time.monotonic()
                self.build()
            except BuildError as err:
                self.log.flush()
                if err.tail:
                    print(f"--- last lines of {self.out / LOG_NAME} ---\n{self.tail()}",
                          file=sys.stderr)
                print(f"gunyah-sim kernel build: {err}", file=sys.stderr)
                return err.code
        done = time.monotonic()
        print(f"gunyah-sim kernel build: {self.release()} built in {done - started:.0f} s "
              f"(configure {configured - started:.0f} s, make {done - configured:.0f} s)",
              file=sys.stderr)
        for name in ("Image", "vmlinux", "System.map", ".config", LOG_NAME):
            print(self.out / name)
        return exitcodes.OK


def cmd_build(args) -> int:
    return Builder(args).main()


def add_parser(subparsers) -> None:
    from .cli import Formatter, add_verbose
    kernel = subparsers.add_parser(
        "kernel", help="build a guest kernel", formatter_class=Formatter,
        epilog=exitcodes.help_text(),
        description="Kernel helpers.  `kernel build` builds an arm64 Image to boot with "
        "`gunyah-sim run --kernel`.")
    add_verbose(kernel)
    ksub = kernel.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)
    build = ksub.add_parser(
        "build", formatter_class=Formatter, epilog=exitcodes.help_text(),
        help="build an arm64 Image from a Linux tree with the project's config fragment",
        description=f"""\
Build an arm64 Image from the Linux tree SRC with Debian's cross compiler ({CROSS_COMPILE}gcc),
out of tree (O=DIR), through ccache when it is installed (GUNYAH_SIM_NO_CCACHE=1: without).
Steps:
  1. --patches: `git am` them when SRC is a git tree, else `patch -p1` each; a rerun with the
     same patches does not apply them again;
  2. configure: allnoconfig + {DEFAULT_FRAGMENT.relative_to(REPO)} + each --config
     (scripts/kconfig/merge_config.sh -n), then olddefconfig;
  3. check every requested option: one the tree defines but that did not get its value is an
     error (with its unmet dependencies) and stops the build; Gunyah options the tree lacks
     are listed as "not in this tree";
  4. make Image.  DIR then holds Image, vmlinux, System.map, .config and build.log.
Reusing DIR rebuilds incrementally.  Needs `scripts/setup --kernel-build` once.""")
    add_verbose(build)
    build.add_argument("src", type=Path, metavar="SRC", help="Linux source tree (writable)")
    build.add_argument("--patches", type=Path, metavar="MBOX|DIR",
                       help="an mbox, a patch, or a directory of *.patch files to apply first")
    build.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                       help="extra config fragment applied after the project's (repeatable; "
                       "later ones win)")
    build.add_argument("-o", "--output", type=Path, metavar="DIR",
                       help="build directory, outside SRC (default: SRC-gunyah-sim-build next "
                       "to SRC)")
    build.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                       help="parallel make jobs")
    build.set_defaults(func=cmd_build)
