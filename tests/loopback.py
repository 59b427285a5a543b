"""Helpers for the external servers tests start on loopback (OpenStack Glance, Keystone,
Barbican): a free port, a process that dies with the test run, and (ServerProcess) what the
Keystone and Barbican fixtures share: started in its own process group, waited for until it
answers, stopped as a lost link would stop it, and started again on the same port after a block
that needs it down."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

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


class ServerProcess:
    """A mixin for a server dataclass with `root`, `proc`, `start()` and `answers()`; its logs
    are LOG_FILES in `root`."""

    LOG_FILES: ClassVar[tuple[str, ...]] = ()
    root: Path
    proc: subprocess.Popen[bytes] | None

    def start(self) -> None:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        """The end of each log file, for a failure's message."""
        parts = []
        for name in self.LOG_FILES:
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def spawn(self, cmd: list[str], env: dict[str, str], out: str = "gunicorn.out") -> None:
        """Start `cmd` in `root`, its output appended to `out` there, in its own process group
        (stop() ends master and workers) that dies with the test run."""
        with open(self.root / out, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=die_with_parent,
                env=env,
            )

    def wait_answering(self, name: str, timeout: float, interval: float = 0.1) -> None:
        """Until the server answers; raises with its logs when it exits or takes too long."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (name, self.proc.returncode, self.log_text()))
            if self.answers():
                return
            time.sleep(interval)
        self.stop()
        raise RuntimeError("%s did not answer within %ss:\n%s" % (name, timeout, self.log_text()))

    def stop(self, sig: int = signal.SIGKILL, grace: float = 5) -> None:
        """End the server's process group (by default as a lost link would: at once). The port
        is free after."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server down for the block, up again (same port, same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()
