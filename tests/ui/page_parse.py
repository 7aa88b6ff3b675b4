"""Just enough HTML reading for the page tests: tables by id (rows with their attributes and cell texts), links,
form options and elements by id (stdlib ``html.parser``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Row:
    attrs: dict[str, str]
    cells: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text) in the row


@dataclass
class Page:
    tables: dict[str, list[Row]] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)  # select id -> (value, text, selected)
    by_id: dict[str, str] = field(default_factory=dict)  # element id -> its text
    images: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)

    def table(self, table_id: str) -> list[Row]:
        return self.tables[table_id]

    def row(self, table_id: str, **attrs: str) -> Row:
        found = [r for r in self.tables[table_id] if all(r.attrs.get(f"data-{k}") == v for k, v in attrs.items())]
        assert len(found) == 1, f"{len(found)} rows of #{table_id} with {attrs}"
        return found[0]


_VOID = ("img", "input", "br", "meta", "link", "hr")


def _clean(text: str) -> str:
    return " ".join(text.split())


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._table: str | None = None
        self._row: Row | None = None
        self._data_row = False
        self._cell: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None
        self._select: str | None = None
        self._option: tuple[str, bool, list[str]] | None = None
        self._ids: list[tuple[str, str, list[str]]] = []  # open elements with an id: (tag, id, texts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a and tag not in ("table", "select", *_VOID):
            self._ids.append((tag, a["id"], []))
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.page.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = Row(a)
            self._data_row = False
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._data_row = self._data_row or tag == "td"
        elif tag == "a":
            self._link = (a.get("href", ""), [])
        elif tag == "select":
            self._select = a.get("id") or a.get("name", "")
            self.page.options[self._select] = []
        elif tag == "option":
            self._option = (a.get("value", ""), "selected" in a, [])
        elif tag == "img":
            self.page.images.append(a.get("src", ""))
        elif tag == "form":
            self.page.forms.append(a)

    def handle_endtag(self, tag: str) -> None:
        if self._ids and self._ids[-1][0] == tag:
            _, element_id, texts = self._ids.pop()
            self.page.by_id[element_id] = _clean("".join(texts))
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._data_row:  # header rows (th only) are left out
                self.page.tables[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.cells.append(_clean("".join(self._cell)))
            self._cell = None
        elif tag == "a" and self._link is not None:
            link = (self._link[0], _clean("".join(self._link[1])))
            self.page.links.append(link)
            if self._row is not None:
                self._row.links.append(link)
            self._link = None
        elif tag == "option" and self._option is not None and self._select is not None:
            value, selected, texts = self._option
            self.page.options[self._select].append((value, _clean("".join(texts)), selected))
            self._option = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        for target in (self._cell, self._link[1] if self._link else None,
                       self._option[2] if self._option else None):
            if target is not None:
                target.append(data)
        for _, _, texts in self._ids:
            texts.append(data)


def read(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    return reader.page
