#!/usr/bin/python3
"""Runs a command under a seccomp filter that denies io_uring as Docker's default profile does.

Usage: seccomp_exec.py -- COMMAND [ARG...]

moby's profiles/seccomp/default.json is an allow list whose default action is SCMP_ACT_ERRNO
with defaultErrnoRet 1, and since Docker 25 io_uring_setup, io_uring_enter and
io_uring_register are not on it: inside a container they fail with EPERM. This wrapper loads
exactly that for the three calls (everything else allowed) with libseccomp's own Python
bindings (Debian package python3-seccomp, for /usr/bin/python3), then execs COMMAND, which
keeps the filter (no_new_privs is set by libseccomp).
"""

import errno
import os
import sys

import seccomp

IO_URING_CALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: seccomp_exec.py -- COMMAND [ARG...]\n")
        return 2
    command = argv[2:]
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    for call in IO_URING_CALLS:
        filt.add_rule(seccomp.ERRNO(errno.EPERM), call)
    filt.load()
    os.execv(command[0], command)
    return 127  # not reached: execv raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv))
