"""gunyah-sim: boot and test Linux's Gunyah drivers on QEMU, with Python as the hypervisor.

Subcommands share option names (see `gunyah-sim SUBCOMMAND --help`) and exit codes (below).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gunyah_el2.hypervisor import ABIS, DEFAULT_ABI

from . import exitcodes

if TYPE_CHECKING:
    from .session import RunOptions

DESCRIPTION = """\
gunyah-sim runs a real arm64 Linux at EL1 on QEMU's virt machine (GICv3, virtualization=on).
A small EL2 shim traps every HVC and SMC the guest makes to a Python service that is the
Gunyah hypervisor (and its Resource Manager).  Defaults: Debian 12's arm64 kernel and a busybox
initramfs, both prepared by scripts/setup into ~/.cache/gunyah-sim ($GUNYAH_SIM_CACHE)."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text \
                and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


# Subcommands that live in their own module: each has add_parser(subparsers) which registers
# the subcommand and sets `func` (args -> exit code).  Shared option groups are the public
# helpers below (machine_options, run_options, add_verbose) so that names stay the same.
SUBCOMMAND_MODULES: list[str] = ["conformance", "kernelcmd", "testcmd"]


def machine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest and machine")
    g.add_argument("--kernel", type=Path, metavar="IMAGE",
                   help="arm64 Image to boot (default: Debian 12's kernel from the cache)")
    g.add_argument("--initrd", type=Path, metavar="CPIO",
                   help="initramfs to use instead of the default busybox one (no --exec then)")
    g.add_argument("--overlay", type=Path, action="append", default=[], metavar="DIR|TAR",
                   help="files added to the default initramfs (repeatable; later ones win)")
    g.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    g.add_argument("--smp", type=int, default=1, metavar="N", help="number of CPUs")
    g.add_argument("--memory", type=int, default=512, metavar="MB", help="guest RAM in MiB")
    g.add_argument("--cpu", default="cortex-a57", metavar="MODEL", help="QEMU CPU model")
    g.add_argument("--vm-cpus", type=int, default=0, metavar="N",
                   help="extra CPUs the hypervisor keeps to run secondary VMs' vCPUs (hidden "
                   "from the primary's DT); with N > 0 the primary also runs under stage 2, "
                   "so lent memory really leaves it")
    g.add_argument("--vm-console", type=Path, metavar="DIR",
                   help="also write each secondary VM's console to DIR/vmN.log")
    g.add_argument("--abi", choices=ABIS, default=DEFAULT_ABI,
                   help="Gunyah driver generation to serve (UID encoding and DT binding)")


def run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run control and output")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="give up after S seconds (exit code 124)")
    g.add_argument("--transport", choices=("shm", "gdb"), default="shm",
                   help="mailbox doorbell: shared memory (fast) or gdbstub breakpoint (reference)")
    g.add_argument("--trace", type=Path, metavar="FILE",
                   help="write every trapped call as a JSON line to FILE")
    g.add_argument("--dtb-out", type=Path, metavar="FILE", help="save the guest's DTB to FILE")
    g.add_argument("--console-log", type=Path, metavar="FILE", help="save the console to FILE")
    g.add_argument("-q", "--quiet", action="store_true", help="do not stream the console")
    g = p.add_argument_group("debugging")
    g.add_argument("--gdb", type=int, metavar="PORT", dest="gdb_port",
                   help="serve the guest to gdb on 127.0.0.1:PORT (0: a free port, printed): "
                   "gdb-multiarch vmlinux -ex 'target remote :PORT'.  Breakpoints, steps and "
                   "Ctrl-C work while the EL2 service runs; needs --transport shm")
    g.add_argument("--pause", action="store_true",
                   help="with --gdb: start the guest halted; it runs when gdb continues it "
                   "(time the guest is stopped in gdb does not count against --timeout)")
    g.add_argument("--vmlinux", type=Path, metavar="FILE",
                   help="the kernel's vmlinux: a hang or panic report then has a symbolized "
                   "backtrace of every vCPU (default: vmlinux next to --kernel, if there)")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-vv: debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gunyah-sim", description=DESCRIPTION,
                                     epilog=exitcodes.help_text(), formatter_class=Formatter)
    add_verbose(parser)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="boot a guest", formatter_class=Formatter,
                         epilog=exitcodes.help_text(),
                         description="Boot the guest and stream its console.  Without --exec "
                         "the default guest runs 'uname -a' and powers off; with --shell you "
                         "get an interactive shell (Ctrl-] leaves).")
    add_verbose(run)
    run.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                     help="run CMD in the guest shell; exit with its status")
    run.add_argument("--shell", action="store_true", help="interactive shell on the console")
    machine_options(run)
    run_options(run)
    run.set_defaults(func=cmd_run)

    dt = sub.add_parser("dt", help="show or validate the guest device tree",
                        formatter_class=Formatter, epilog=exitcodes.help_text())
    add_verbose(dt)
    dsub = dt.add_subparsers(dest="dt_command", metavar="ACTION", required=True)
    show = dsub.add_parser("show", help="print the guest DT as DTS", formatter_class=Formatter)
    add_verbose(show)
    machine_options(show)
    show.add_argument("--dtb-out", type=Path, metavar="FILE", help="also save the DTB to FILE")
    show.set_defaults(func=cmd_dt_show)
    val = dsub.add_parser("validate", formatter_class=Formatter,
                          help="validate a DT against the Gunyah binding with dtschema",
                          description="Exit 0 when the DT satisfies the binding, 1 with "
                          "dtschema's messages when it does not.")
    add_verbose(val)
    machine_options(val)
    val.add_argument("--dtb", type=Path, metavar="FILE",
                     help="DTB to check (default: the DT gunyah-sim generates for --abi)")
    val.add_argument("--bindings", type=Path, metavar="DIR",
                     help="a kernel tree's Documentation/devicetree/bindings (default: the "
                     "project's own Gunyah binding for --abi)")
    val.set_defaults(func=cmd_dt_validate)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"qemu_bridge.{name}").add_parser(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="gunyah-sim %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr)


def run_options_from(args) -> "RunOptions":
    from .session import RunOptions
    return RunOptions(
        kernel=args.kernel, initrd=args.initrd, overlays=args.overlay, append=args.append,
        smp=args.smp, memory_mb=args.memory, cpu=args.cpu, abi=args.abi,
        vm_cpus=args.vm_cpus, vm_console_dir=args.vm_console,
        timeout=getattr(args, "timeout", 300.0), transport=getattr(args, "transport", "shm"),
        trace=getattr(args, "trace", None), dtb_out=getattr(args, "dtb_out", None),
        console_log=getattr(args, "console_log", None), quiet=getattr(args, "quiet", False),
        gdb_port=getattr(args, "gdb_port", None), pause=getattr(args, "pause", False),
        vmlinux=getattr(args, "vmlinux", None))


def check_machine_args(args) -> str | None:
    from . import mailbox
    if not 1 <= args.smp <= mailbox.MAX_CPUS:
        return f"--smp must be 1..{mailbox.MAX_CPUS}"
    if args.vm_cpus < 0 or args.smp + args.vm_cpus > mailbox.MAX_CPUS:
        return f"--smp plus --vm-cpus must be at most {mailbox.MAX_CPUS}"
    if args.memory < 64:
        return "--memory must be at least 64 MiB"
    for path in [args.kernel, args.initrd, *args.overlay, getattr(args, "vmlinux", None)]:
        if path is not None and not path.exists():
            return f"{path} does not exist"
    return check_debug_args(args)


def check_debug_args(args) -> str | None:
    port = getattr(args, "gdb_port", None)
    if port is not None and not 0 <= port <= 65535:
        return "--gdb PORT must be 0..65535"
    if port is not None and getattr(args, "transport", "shm") != "shm":
        return "--gdb needs --transport shm (the gdb transport's doorbell breakpoint would " \
               "collide with the user's gdb)"
    if getattr(args, "pause", False) and port is None:
        return "--pause needs --gdb PORT (nothing else could start the guest)"
    return None


def cmd_run(args) -> int:
    from .session import run
    problem = check_machine_args(args)
    if problem is None and args.initrd is not None and (args.exec_cmd or args.overlay):
        problem = "--exec and --overlay need the default initramfs (drop --initrd)"
    if problem is None and args.shell and args.exec_cmd:
        problem = "--shell and --exec exclude each other"
    if problem:
        print(f"gunyah-sim run: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    opts = run_options_from(args)
    opts.command = args.exec_cmd
    opts.interactive = args.shell
    result = run(opts)
    if not result.ok and result.guest_status is None:
        print(result.failure_report(), file=sys.stderr)
    elif args.verbose:
        print(f"gunyah-sim: {result.reason}; booted to init in {result.boot_seconds or 0:.2f} s, "
              f"{result.hypercalls} trapped calls, {result.seconds:.2f} s in all",
              file=sys.stderr)
    return result.code


def cmd_dt_show(args) -> int:
    from . import dtcmd
    problem = check_machine_args(args)
    if problem:
        print(f"gunyah-sim dt show: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    return dtcmd.show(run_options_from(args))


def cmd_dt_validate(args) -> int:
    from . import dtcmd
    problem = check_machine_args(args)
    if problem is None and args.dtb is not None and not args.dtb.exists():
        problem = f"{args.dtb} does not exist"
    if problem is None and args.bindings is not None and not args.bindings.is_dir():
        problem = f"{args.bindings} is not a directory"
    if problem:
        print(f"gunyah-sim dt validate: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    return dtcmd.validate(run_options_from(args), dtb=args.dtb, bindings=args.bindings)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("gunyah-sim: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
