"""Exit codes shared by every gunyah-sim subcommand (documented in `gunyah-sim --help`).

`run --exec CMD` exits with CMD's own status; the fixed codes below are chosen high so that
they rarely collide with a command's status, and every failure also prints a one-line reason.
"""
OK = 0
FAILURE = 1          # tests or validation failed (conformance, dt validate, test)
USAGE = 2            # bad command line
SETUP = 3            # a prerequisite is missing: run scripts/setup
INTERNAL = 119       # a bug in gunyah-sim's own EL2 service or shim
GUEST_STOPPED = 120  # the guest powered off or rebooted without reporting a status
PANIC = 121          # the guest kernel panicked
TIMEOUT = 124        # the run exceeded --timeout
QEMU = 125           # QEMU failed to start or died
INTERRUPTED = 130    # Ctrl-C

TABLE = [
    (OK, "success (for run --exec: the command's own status is the exit code)"),
    (FAILURE, "tests or validation failed"),
    (USAGE, "bad command line"),
    (SETUP, "a prerequisite is missing (run scripts/setup)"),
    (INTERNAL, "internal error in gunyah-sim's EL2 service or shim"),
    (GUEST_STOPPED, "the guest powered off or rebooted before reporting a status"),
    (PANIC, "the guest kernel panicked"),
    (TIMEOUT, "timeout (--timeout)"),
    (QEMU, "QEMU failed to start or died"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
]


def help_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in TABLE)
