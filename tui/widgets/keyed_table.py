"""A DataTable whose rows are keyed by a daemon id and kept in step with fresh data in place:
changed cells via `update_cell`, vanished rows via `remove_row`, new rows added in bulk.

Columns have fixed widths and rows are one line high, so nothing needs measuring: Textual's
DataTable measures every cell of every new row on idle (about 0.25 ms a cell, 2.5 s for 10,000
images); `_update_dimensions` is overridden to only recompute the virtual size, and
`add_keyed_rows` fills the table's row maps in one pass and refreshes once; `_reorder` applies the
caller's order. These lean on DataTable internals (Textual 8: `_row_locations`, `_data`,
`rows`, `_update_count`); tests/tui exercise them against the installed version."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.widgets import DataTable
from textual.widgets._data_table import ColumnKey, Row, RowKey

from tui.display import plain
from tui.widgets.contained import Contained

log = logging.getLogger(__name__)

Values = tuple[Any, ...]
# A full rebuild (clear + bulk add) beats this many O(n) remove_row calls.
REBUILD_AFTER_REMOVALS = 64


class _Lines(Sequence[tuple[RowKey, int]]):
    """DataTable's line → (row key, line within the row) map, for one-line rows."""

    def __init__(self, keys: list[RowKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [(k, 0) for k in self._keys[index]]
        return (self._keys[index], 0)

    def clear(self) -> None:
        """DataTable.clear() empties the cached list; the view follows the key order instead."""


class _Cells(dict[ColumnKey, Any]):
    """One row's cells, drawn on first read: DataTable reads a row's cells only to draw it (or
    for get_cell), so 10,000 rows added cost one tuple each, not 70,000 Rich Texts (0.1 s a
    page of 1,000), and only the rows scrolled into view are ever rendered."""

    __slots__ = ("_columns", "_draw", "_values")

    def __init__(self, draw: Any, values: Values, columns: dict[ColumnKey, tuple[str, int]]) -> None:
        super().__init__()
        self._draw, self._values, self._columns = draw, values, columns

    def __missing__(self, key: ColumnKey) -> Any:
        name, index = self._columns[key]
        cell = self[key] = self._draw(name, self._values[index]) if index < len(self._values) else None
        return cell


class KeyedTable(Contained, DataTable[Any]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        # DataTable's home/end scroll sideways; an operator means the first / last row.
        Binding("home,g", "scroll_top", "First", show=False),
        Binding("end,G", "scroll_bottom", "Last", show=False),
    ]

    def __init__(
        self, columns: Sequence[tuple[str, str, int]], *, grow: Sequence[tuple[str, int]] = (), id: str | None = None
    ) -> None:
        """`columns`: (key, label, width) in display order; `grow`: (key, at most this many more
        cells), in order, sharing the width a wide terminal leaves over."""
        self._spec = list(columns)
        self._grow = list(grow)
        self._values: dict[str, Values] = {}
        # Keys in display order, mirroring the table's row locations (and as RowKeys); set
        # before DataTable.__init__, which already reads ordered_rows.
        self._order: list[str] = []
        self._order_keys: list[RowKey] = []
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        self._ensure_columns()

    def _ensure_columns(self) -> None:
        if not self.columns:
            for key, label, width in self._spec:
                self.add_column(label, width=width, key=key)

    def on_resize(self, event: events.Resize) -> None:
        if not self._grow:
            return
        base = {key: width for key, _, width in self._spec}
        spare = event.size.width - 1 - sum(width + 2 * self.cell_padding for width in base.values())
        changed = False
        for key, most in self._grow:
            extra = max(0, min(most, spare))
            spare -= extra
            column = self.columns.get(ColumnKey(key))
            if column is not None and column.width != base[key] + extra:
                column.width = base[key] + extra
                changed = True
        if changed:
            self._update_dimensions(())
            self.refresh(layout=True)

    # -- how a value looks: subclasses style some columns --------------------------------

    def render_value(self, column: str, value: Any) -> Any:
        """A cell's renderable. A str is daemon text: DataTable would parse it as markup
        (`[/x]` raises while drawing), so it becomes plain Text with control characters made
        visible; subclasses style some columns and pass the rest here."""
        return plain(value) if isinstance(value, str) else value

    def _cell(self, column: str, value: Any) -> Any:
        """The cell as drawn: text longer than its column ends in "…" instead of being cut."""
        cell = self.render_value(column, value)
        if isinstance(cell, Text):
            cell.no_wrap = True
            cell.overflow = "ellipsis"
        return cell

    # -- reading ------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    def values_of(self, key: str) -> Values | None:
        return self._values.get(key)

    @property
    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:
            return None
        return str(row_key.value) if row_key.value is not None else None

    def cell_text(self, key: str, column: str) -> str:
        value = self.get_cell(key, column)
        return value.plain if isinstance(value, Text) else str(value)

    # -- writing ------------------------------------------------------------------------

    @property
    def _y_offsets(self) -> _Lines:  # type: ignore[override]
        """Every row is one line: line y is row y. DataTable rebuilds this list (10,000 rows:
        0.1 s) after every change; a view over the key order costs nothing."""
        return _Lines(self._order_keys)

    @property
    def ordered_rows(self) -> list[Row]:
        rows = self.rows
        return [rows[k] for k in self._order_keys if k in rows]

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        if any(c.auto_width for c in self.columns.values()):
            super()._update_dimensions(new_rows)
            return
        width = sum(c.get_render_width(self) for c in self.columns.values()) + self._row_label_column_width
        header = self.header_height if self.show_header else 0
        self.virtual_size = Size(width, self._total_row_height + header)

    def add_keyed_rows(self, rows: Sequence[tuple[str, Values]]) -> None:
        self._ensure_columns()
        if not rows:
            return
        render = self._cell
        columns = {c.key: (str(c.key.value), i) for i, c in enumerate(self.ordered_columns)}
        was_empty = self.row_count == 0
        index = self.row_count
        for key, values in rows:
            row_key = RowKey(key)
            self._row_locations[row_key] = index
            self._data[row_key] = _Cells(render, values, columns)
            self.rows[row_key] = Row(row_key, 1, None, False)
            self._values[key] = values
            self._order.append(key)
            self._order_keys.append(row_key)
            index += 1
        self._require_update_dimensions = True
        if was_empty:  # rows added below keep the lines drawn so far (cached by row key)
            self._update_count += 1
        self.cursor_coordinate = self.cursor_coordinate
        if was_empty and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()
        self.check_idle()
        self.refresh(layout=True)

    def replace_rows(self, rows: Sequence[tuple[str, Values]]) -> None:
        """Clear and refill, keeping the cursor on the same key if it is still there."""
        keep = self.highlighted_key
        self._values.clear()
        self._order, self._order_keys = [], []
        self.clear()
        self.add_keyed_rows(rows)
        self._move_to(keep)

    def _move_to(self, key: str | None) -> None:
        if key is not None and key in self._values:
            self.move_cursor(row=self.get_row_index(key), animate=False)

    def sync_rows(self, rows: Sequence[tuple[str, Values]]) -> bool:
        """Make the table show `rows`, in that order, with the fewest changes: update_cell for
        changed cells, remove_row for vanished keys, a bulk add for new ones, and a reorder
        only if the order changed. Returns True if anything changed."""
        self._ensure_columns()
        desired = dict(rows)
        removed = [k for k in self._values if k not in desired]
        if not self._values or len(removed) > REBUILD_AFTER_REMOVALS:
            if not desired and not self._values:
                return False
            self.replace_rows(rows)
            return True
        names = [str(c.key.value) for c in self.ordered_columns]
        changed = False
        if removed:
            for key in removed:
                index = self._order.index(key)  # the mirror first: remove_row reads it
                del self._order[index], self._order_keys[index]
                del self._values[key]
                self.remove_row(key)
            changed = True
        for key, new in desired.items():
            old = self._values.get(key)
            if old is None or old == new:
                continue
            for name, before, after in zip(names, old, new, strict=False):
                if before != after:
                    self.update_cell(key, name, self._cell(name, after))
            self._values[key] = new
            changed = True
        added = [(k, v) for k, v in rows if k not in self._values]
        if added:
            self.add_keyed_rows(added)
            changed = True
        wanted = list(desired)
        if self._order != wanted:
            self._reorder(wanted)
            changed = True
        return changed

    def _reorder(self, order: list[str]) -> None:
        keep = self.highlighted_key
        self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(order)})
        self._order = list(order)
        self._order_keys = [RowKey(k) for k in order]
        self._update_count += 1
        self.refresh()
        self._move_to(keep)
