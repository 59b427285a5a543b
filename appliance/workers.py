"""Worker threads and tools run at a lower CPU priority than the event loop, so hashing,
decompression and qemu-img never make API answers wait when the cores are busy (Linux nice
values are per thread). Uncontended, they still get every idle cycle."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

from appliance.memory import TRIMMER

WORKER_NICE = 5
# A client's own upload: its hashing threads yield to the event loop too, which must keep
# answering every other request while the cores are busy (at nice 0, during an upload on a
# loaded 2-core machine, the loop waited for a CPU 41-46% of the time, at nice 5 26-34%, and
# image-show's p50 went from 7-11 to 2-4 ms); just above imports, which nobody waits on byte by
# byte. Alone on the machine, they still get every idle cycle.
FOREGROUND_NICE = 4


def lower_priority(nice: int = WORKER_NICE) -> None:
    """ThreadPoolExecutor initializer: renice the calling worker thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        pass  # not permitted or not Linux: run at normal priority


class _Workers(ThreadPoolExecutor):
    """A transfer's (or an import stage's) threads: when they are shut down, the buffers they
    passed around are freed, and the memory goes back to the system (memory.TRIMMER) whichever
    path the bytes took."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        TRIMMER.transfer_ended()


def executor(workers: int, name: str, background: bool = True) -> ThreadPoolExecutor:
    nice = WORKER_NICE if background else FOREGROUND_NICE
    return _Workers(workers, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,))


def nice_argv(argv: list[str]) -> list[str]:
    """Prefix an external command with `nice` (coreutils) at the workers' priority."""
    nice = shutil.which("nice")
    return [nice, "-n", str(WORKER_NICE), *argv] if nice else argv
