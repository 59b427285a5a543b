"""Helpers for the external servers tests start on loopback (OpenStack Glance, Keystone)."""

from __future__ import annotations

import ctypes
import signal
import socket

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A subprocess `preexec_fn`: a test run that is killed must not leave its servers holding
    their ports (Linux prctl: SIGKILL when the parent dies)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server that must know its URL before it starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
