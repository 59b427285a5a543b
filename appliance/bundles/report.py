"""What a bundle import or check did to each image, as an operator and the API read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Outcomes of one image in a report.
OK = "ok"
IMPORTED = "imported"
SKIPPED = "skipped"
FAILED = "failed"


@dataclass(frozen=True)
class EntryResult:
    id: str
    name: str | None
    size: int
    outcome: str  # OK, IMPORTED, SKIPPED or FAILED
    message: str = ""


@dataclass(frozen=True)
class BundleReport:
    signature: str
    entries: tuple[EntryResult, ...]
    error: str = ""  # what is wrong with the bundle itself (truncation, damage), if anything

    @property
    def ok(self) -> bool:
        return not self.error and all(e.outcome != FAILED for e in self.entries)

    def lines(self) -> list[str]:
        """The report as an operator reads it (the CLI, and the inbox's .error files)."""
        out = ["signature: %s" % self.signature]
        for e in self.entries:
            out.append(
                "%-8s %s  %s  %d bytes%s"
                % (e.outcome, e.id, e.name or "-", e.size, "  " + e.message if e.message else "")
            )
        if self.error:
            out.append("bundle error: %s" % self.error)
        counts = {o: sum(1 for e in self.entries if e.outcome == o) for o in (OK, IMPORTED, SKIPPED, FAILED)}
        out.append(
            "%d image(s): %s"
            % (len(self.entries), ", ".join("%d %s" % (n, o) for o, n in counts.items() if n) or "nothing to do")
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "error": self.error,
            "ok": self.ok,
            "images": [
                {"id": e.id, "name": e.name, "size": e.size, "outcome": e.outcome, "message": e.message}
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BundleReport:
        return cls(
            signature=data["signature"],
            error=data.get("error", ""),
            entries=tuple(
                EntryResult(
                    id=e["id"], name=e["name"], size=e["size"], outcome=e["outcome"], message=e.get("message", "")
                )
                for e in data["images"]
            ),
        )
