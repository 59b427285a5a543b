"""What every import step sees and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from appliance.errors import BadRequest


class ImportFailed(BadRequest):
    """An import step refused the data; the message says why, for the task and the user."""


@dataclass(frozen=True)
class StagedImage:
    """The data an import is working on. Steps never modify `path` in place: they write a new
    file under `StepContext.work_dir` and return a StagedImage pointing at it."""

    path: Path
    size: int
    disk_format: str | None
    container_format: str | None
    virtual_size: int | None = None
    # Properties to set on the image when the import succeeds (e.g. injected metadata).
    properties: dict[str, str] = field(default_factory=dict)

    def evolve(self, **changes: object) -> StagedImage:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StepContext:
    image_id: str
    work_dir: Path  # private scratch directory of this import; removed afterwards
    roles: frozenset[str]  # roles of the user who asked for the import
    user_properties: frozenset[str] = frozenset()  # properties the user already set on the image
    is_admin: bool = False  # what Glance's context.is_admin (the context_is_admin rule) says
    report: Callable[[str], None] = lambda message: None  # progress notes for the task


class ImportStep(Protocol):
    name: str

    async def run(self, staged: StagedImage, ctx: StepContext) -> StagedImage:
        """Return the (possibly new) staged image, or raise ImportFailed with a clear reason.
        Blocking work goes to threads, external tools to subprocesses."""
        ...
