"""image_conversion: convert the staged image to one disk format with qemu-img (Glance's plugin).

appliance.formats decides whether the bytes are what the user claimed and safe to open before
qemu-img ever sees them; qemu-img then runs with the source format pinned (-f, so it never
probes) and under CPU-time and address-space limits, and its output is inspected again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import FormatRejected
from appliance.formats import FormatInspector, Inspection, inspect_file, introspected_properties
from appliance.pipeline.base import ImportFailed, StagedImage, StepContext
from appliance.workers import nice_argv

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("raw", "qcow2", "vmdk")
# Claims the inspector does not check (kernels, ramdisks, Virtuozzo ploop): their bytes have
# no verified format to pin for qemu-img, so they are left as they are.
_NOT_CONVERTED = frozenset({"ami", "ari", "aki", "ploop"})
# The inspector's names for what it detected → qemu-img's driver names.
_QEMU_DRIVERS = {
    "raw": "raw",
    "gpt": "raw",
    "mbr": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
}
_STDERR_LIMIT = 500
_SECTOR = 512
_CPU_GRACE = 5  # seconds between the soft (SIGXCPU) and hard (SIGKILL) CPU limits


@dataclass(frozen=True)
class ConvertPlan:
    source: str  # qemu-img's driver for the input, pinned
    found: str  # the format the inspector detected
    virtual_size: int  # qemu-img info's


class Convert:
    name = "image_conversion"

    def __init__(
        self,
        output_format: str = "raw",
        qemu_img: str = "qemu-img",
        cpu_seconds: int = 600,
        memory_bytes: int = 2 << 30,
        max_virtual_size: int | None = None,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError("output_format %r is not one of: %s" % (output_format, ", ".join(OUTPUT_FORMATS)))
        if cpu_seconds <= 0 or memory_bytes <= 0:
            raise ValueError("cpu_seconds and memory_bytes must be positive")
        self.output_format = output_format
        self.qemu_img = qemu_img
        self.cpu_seconds = cpu_seconds
        self.memory_bytes = memory_bytes
        self.max_virtual_size = max_virtual_size or None  # 0, as in formats.max_virtual_size: no limit
        # prlimit (util-linux) sets the limits and then execs qemu-img, so the limited process is
        # qemu-img itself. A preexec_fn would run Python between fork and exec in a daemon full of
        # threads (asyncio.to_thread), which the subprocess docs warn can deadlock.
        self._prlimit = shutil.which("prlimit") or "prlimit"

    async def run(self, staged: StagedImage, ctx: StepContext) -> StagedImage:
        checked, plan = await self.check(staged, ctx)
        if plan is None:
            return checked
        fd, name = tempfile.mkstemp(prefix="converted-", suffix="." + self.output_format, dir=ctx.work_dir)
        os.close(fd)
        out = Path(name)
        try:
            await self._qemu_img(
                "convert", "-f", plan.source, "-O", self.output_format, _absolute(staged.path), _absolute(out)
            )
            return await self.finish(checked, plan, out, ctx)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(out.unlink, True))
            raise

    async def check(self, staged: StagedImage, ctx: StepContext) -> tuple[StagedImage, ConvertPlan | None]:
        """Every check before qemu-img converts: the inspection of the claimed format, the
        virtual size, qemu-img info's own view. Returns the image and what to convert, or
        (the image, None) when it stays as it is."""
        if staged.disk_format in _NOT_CONVERTED:
            log.info("image %s: disk_format %s is not converted", ctx.image_id, staged.disk_format)
            return staged, None
        found = await _inspect(staged.path, staged.disk_format, "", self.max_virtual_size)
        self._check_virtual_size(found.virtual_size)
        properties = staged.properties
        if found.format == "vmdk":
            properties = introspected_properties(found, properties, ctx.user_properties)
        source = _QEMU_DRIVERS.get(found.format)
        # ISO (no driver here) stays as it is, and so does data already in the output format.
        if source is None or source == self.output_format:
            return staged.evolve(virtual_size=found.virtual_size, properties=properties), None
        info = await self._info(staged.path, source)
        self._check_virtual_size(info.get("virtual-size"))
        plan = ConvertPlan(source=source, found=found.format, virtual_size=int(info["virtual-size"]))
        return staged.evolve(properties=properties), plan

    def can_convert_ranges(self, plan: ConvertPlan) -> bool:
        """Whether `convert_range` can write the output piece by piece (raw output only: its
        bytes sit at the guest offsets; qemu's raw windows are whole sectors)."""
        return self.output_format == "raw" and plan.virtual_size % _SECTOR == 0

    async def convert_range(self, plan: ConvertPlan, source: Path, out: Path, offset: int, length: int) -> None:
        """Convert guest bytes [offset, offset + length) of `source` into the same range of the
        raw file `out`, which exists, is all zeros and at least that long. The same pinned
        drivers and limits as a whole conversion; backing files are switched off explicitly."""
        window = {"driver": "raw", "offset": offset, "size": length}
        src = {**window, "file": {"driver": plan.source, "file": {"driver": "file", "filename": _absolute(source)}}}
        if plan.source == "qcow2":
            src["file"]["backing"] = None  # type: ignore[index]
        dst = {**window, "file": {"driver": "file", "filename": _absolute(out)}}
        # -n: write into the existing file; --target-is-zero: leave its zero ranges unwritten.
        await self._qemu_img(
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            "-n",
            "--target-is-zero",
            "json:" + json.dumps(src),
            "json:" + json.dumps(dst),
        )

    def output_inspector(self) -> FormatInspector:
        """The inspection of the converted output, for a caller that reads it anyway."""
        return FormatInspector(self.output_format, self.max_virtual_size)

    async def finish(
        self, staged: StagedImage, plan: ConvertPlan, out: Path, ctx: StepContext, inspected: Inspection | None = None
    ) -> StagedImage:
        """The converted output inspected again (or `inspected`: the output_inspector() fed
        every byte of `out`), as the image to go on with."""
        result = (
            inspected
            if inspected is not None
            else await _inspect(out, self.output_format, "converted image failed inspection: ", self.max_virtual_size)
        )
        size = (await asyncio.to_thread(out.stat)).st_size
        log.info(
            "image %s: converted %s to %s (%d -> %d bytes)",
            ctx.image_id,
            plan.found,
            self.output_format,
            staged.size,
            size,
        )
        ctx.report("converted %s to %s" % (plan.found, self.output_format))
        return staged.evolve(
            path=out,
            disk_format=self.output_format,
            container_format="bare",
            size=size,
            virtual_size=result.virtual_size,
        )

    def _check_virtual_size(self, virtual_size: object) -> None:
        limit = self.max_virtual_size
        if limit is not None and isinstance(virtual_size, int) and virtual_size > limit:
            raise ImportFailed("image virtual size %d bytes exceeds the limit of %d bytes" % (virtual_size, limit))

    async def _info(self, path: Path, source: str) -> dict[str, Any]:
        out = await self._qemu_img("info", "-f", source, "--output=json", _absolute(path))
        try:
            info = json.loads(out)
            int(info["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise ImportFailed("qemu-img info gave unreadable output") from None
        # A cross-check of qemu's own view; the inspector has already refused such images.
        data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
        if info.get("backing-filename") or data_file:
            raise ImportFailed("qemu-img reports that the image references another file; such images are refused")
        return dict(info)

    async def _qemu_img(self, *args: str) -> bytes:
        # Linux sends SIGKILL rather than SIGXCPU when soft and hard CPU limits are equal; the
        # higher hard limit lets the exit status say that the CPU limit was reached.
        cpu = "--cpu=%d:%d" % (self.cpu_seconds, self.cpu_seconds + _CPU_GRACE)
        argv = nice_argv([self._prlimit, cpu, "--as=%d" % self.memory_bytes, "--", self.qemu_img, *args])
        log.debug("running %s", argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise ImportFailed("cannot run qemu-img: %s" % exc) from None
        try:
            stdout, stderr = await proc.communicate()
        except BaseException:  # cancelled: qemu-img must not outlive its task
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode:
            raise ImportFailed(
                "qemu-img %s failed (%s): %s" % (args[0], self._exit_reason(proc.returncode), _trim(stderr))
            )
        return stdout

    def _exit_reason(self, code: int) -> str:
        if code > 0:
            return "exit status %d" % code
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        if -code == signal.SIGXCPU:
            return "killed by %s: CPU time limit of %d s reached" % (name, self.cpu_seconds)
        return "killed by %s" % name


async def _inspect(path: Path, claimed: str | None, prefix: str, max_virtual_size: int | None) -> Inspection:
    try:
        return await asyncio.to_thread(inspect_file, str(path), claimed, max_virtual_size)
    except FormatRejected as exc:
        raise ImportFailed(prefix + str(exc)) from None


def _trim(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip() or "no error output"
    return text if len(text) <= _STDERR_LIMIT else text[:_STDERR_LIMIT] + "..."


def _absolute(path: Path) -> str:
    """qemu-img takes absolute paths, so a name can never be read as an option or a protocol."""
    return os.path.abspath(path)
