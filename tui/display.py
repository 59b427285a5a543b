"""Pure text for the screens: sizes, bars, rates, durations, status and level colours, and
`visible` / `plain`, through which every string from the daemon reaches the screen."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
EMPTY = "—"

STATUS_STYLES = {
    "active": "green",
    "queued": "yellow",
    "saving": "cyan",
    "uploading": "cyan",
    "importing": "cyan",
    "deactivated": "magenta",
    "killed": "bold red",
    "deleted": "red",
    "pending_delete": "red",
    # tasks
    "processing": "cyan",
    "pending": "yellow",
    "success": "green",
    "failure": "bold red",
}
LEVEL_STYLES = {
    "debug": "dim",
    "info": "cyan",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold white on red",
}


def _escape(char: str) -> str:
    code = ord(char)
    return "\\x%02x" % code if code <= 0xFF else "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code


def visible(value: object) -> str:
    """A string from the daemon (an image name, property, message, error...) made safe to show.

    Every character Python does not call printable (C0 controls and ESC, DEL, C1 controls, bidi
    overrides and other format characters, line/paragraph separators, non-ASCII spaces,
    unassigned code points) is shown as its escape: `\\x1b`, `\\x7f`, `\\u202e`, `\\U000e0001`.
    Nothing reaches the terminal that it would act on. The result must still be shown as plain
    text, never as markup: pass it to `Text`, or use `plain`."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def plain(value: object, style: str = "") -> Text:
    """Daemon text as a Rich Text: never parsed as markup (`[b]x[/b]` shows as typed, `[/x]`
    cannot fail), control characters made visible (`visible`)."""
    return Text(visible(value), style=style, end="")


def human_bytes(n: int | float | None) -> str:
    """1536 → "1.5 KiB"; at most 8 characters ("1023 MiB")."""
    if n is None:
        return EMPTY
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            if unit == "B":
                return "%d B" % value
            return ("%.1f %s" if abs(value) < 100 else "%.0f %s") % (value, unit)
        value /= 1024
    raise AssertionError("unreachable")


def human_pair(done: int | None, total: int | None) -> str:
    """Bytes done of total, the unit said once when both share it: "1.2/4.0 GiB"."""
    if done is None:
        return EMPTY
    if not total:
        return "%s/?" % human_bytes(done)
    a, b = human_bytes(done), human_bytes(total)
    unit_a, unit_b = a.split(" ")[1], b.split(" ")[1]
    return "%s/%s" % (a.split(" ")[0], b) if unit_a == unit_b else "%s/%s" % (a, b)


def human_rate(bytes_per_second: float | None) -> str:
    if bytes_per_second is None:
        return EMPTY
    return "%s/s" % human_bytes(bytes_per_second)


def human_duration(seconds: float | None) -> str:
    """Compact: 42s, 3m05s, 2h10m, 3d04h."""
    if seconds is None:
        return EMPTY
    s = round(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % divmod(s, 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, (s % 3600) // 60)
    return "%dd%02dh" % (s // 86400, (s % 86400) // 3600)


def coarse_duration(seconds: float) -> str:
    """One unit: 42s, 3m, 2h, 3d (a table cell that changes once a minute, not every poll)."""
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return "%d%s" % (s // size, unit)
    return "%ds" % s


def ago(at: float | None, now: float, coarse: bool = False) -> str:
    """How long before `now` an epoch time was: "42s ago"; the future reads "in 25s"."""
    if at is None:
        return EMPTY
    say = coarse_duration if coarse else human_duration
    if at > now + 0.5:
        return "in %s" % say(at - now)
    return "%s ago" % say(max(0.0, now - at))


def iso_epoch(stamp: str | None) -> float | None:
    """The daemon's ISO 8601 times ("2026-05-10T10:00:00Z") as epoch seconds."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def percent(part: float | None, whole: float | None) -> str:
    return "%d%%" % int(100 * part / whole) if part is not None and whole else EMPTY


def short_id(image_id: str) -> str:
    return image_id[:8]


def status_text(status: str) -> Text:
    return plain(status, style=STATUS_STYLES.get(status, ""))


def level_style(level: str) -> str:
    return LEVEL_STYLES.get(level, "")


def progress_bar(done: int | None, total: int | None, width: int = 8) -> Text:
    """A text bar with the percentage ("█████░░░░░  50%"); unknown total → an empty bar."""
    if not total or done is None:
        return Text("░" * width + "    ?", style="dim")
    fraction = max(0.0, min(1.0, done / total))
    filled = int(fraction * width)
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(" %3d%%" % int(fraction * 100))
    return bar


def capacity_bar(total: int, free: int, images: int, width: int = 30) -> Text:
    """Disk usage of a store: image data (solid), other data (shaded), free (light)."""
    if total <= 0:
        return Text("░" * width, style="dim")
    used = max(0, total - free)
    mine = max(0, min(images, used))
    cells_used = round(width * used / total)
    cells_mine = min(cells_used, round(width * mine / total))
    if mine and not cells_mine:
        cells_mine = 1
        cells_used = max(cells_used, 1)
    fraction = used / total
    colour = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.75 else "green"
    bar = Text("█" * cells_mine, style=colour)
    bar.append("▓" * (cells_used - cells_mine), style=colour + " dim")
    bar.append("░" * (width - cells_used), style="dim")
    return bar


def usage_bar(used: int, limit: int, low: int, high: int, width: int = 20) -> Text:
    """Cache use against its limit: green under the low watermark (%), yellow up to the high
    one, red above it (where eviction starts); a `│` marks the high watermark."""
    if limit <= 0:
        return Text("░" * width, style="dim")
    fraction = max(0.0, min(1.0, used / limit))
    colour = "red" if fraction * 100 >= high else "yellow" if fraction * 100 >= low else "green"
    mark = min(width - 1, int(width * high / 100))
    cells = round(width * fraction)
    if used and not cells:
        cells = 1
    bar = Text()
    for i in range(width):
        if i == mark:
            bar.append("│", style="bold " + colour if i < cells else "bold")
        elif i < cells:
            bar.append("█", style=colour)
        else:
            bar.append("░", style="dim")
    return bar
