"""Worker threads and tools run at a lower CPU priority than the event loop, so hashing,
decompression and qemu-img never make API answers wait when the cores are busy (Linux nice
values are per thread). Uncontended, they still get every idle cycle."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

WORKER_NICE = 5


def lower_priority() -> None:
    """ThreadPoolExecutor initializer: renice the calling worker thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (OSError, AttributeError):
        pass  # not permitted or not Linux: run at normal priority


def executor(workers: int, name: str, background: bool = True) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=lower_priority if background else None)


def nice_argv(argv: list[str]) -> list[str]:
    """Prefix an external command with `nice` (coreutils) at the workers' priority."""
    nice = shutil.which("nice")
    return [nice, "-n", str(WORKER_NICE), *argv] if nice else argv
