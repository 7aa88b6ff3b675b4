"""Turn a raw RFC 822 e-mail into the text a classifier reads: subject + readable body.

Uses the stdlib ``email`` package to undo quoted-printable/base64 and charsets; HTML parts are
reduced to their visible text with ``html.parser``.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import re
from email.message import Message
from html.parser import HTMLParser

_DEFAULT_MAX_CHARS = 20_000  # the model reads a few hundred tokens; keep snapshots small
_SKIPPED_HTML_TAGS = frozenset({"script", "style", "head", "title"})
_WHITESPACE = re.compile(r"\s+")


class _VisibleText(HTMLParser):
    """Collects the text a reader would see, skipping scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIPPED_HTML_TAGS:
            self._skip_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_HTML_TAGS and self._skip_depth:
            self._skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document, whitespace collapsed."""
    parser = _VisibleText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001 - spam HTML is often broken; keep what was parsed
        pass
    return _WHITESPACE.sub(" ", " ".join(parser.parts)).strip()


def _decode_payload(part: Message) -> str:
    payload = part.get_payload(decode=True)  # undoes quoted-printable and base64
    if not isinstance(payload, bytes):  # None for a multipart container: its parts are walked instead
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        return payload.decode("latin-1", errors="replace")


def _decode_subject(raw: str | None) -> str:
    if not raw:
        return ""
    pieces = []
    for value, charset in email.header.decode_header(raw):
        if isinstance(value, bytes):
            try:
                value = value.decode(charset or "latin-1", errors="replace")
            except LookupError:
                value = value.decode("latin-1", errors="replace")
        pieces.append(value)
    return _WHITESPACE.sub(" ", "".join(pieces)).strip()


def body_text(message: Message) -> str:
    """Readable body: text/plain parts, else text/html parts reduced to text."""
    plain, html = [], []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_subtype() == "html":
            html.append(html_to_text(_decode_payload(part)))
        else:
            plain.append(_decode_payload(part))
    text = "\n".join(p for p in plain if p.strip()) or "\n".join(html)
    return text.strip()


def email_to_text(raw: bytes | str, max_chars: int = _DEFAULT_MAX_CHARS) -> str:
    """Subject and body of a raw e-mail as one string, at most ``max_chars`` long."""
    if isinstance(raw, str):
        message = email.message_from_string(raw, policy=email.policy.compat32)
    else:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = _decode_subject(message.get("Subject"))
    text = f"{subject}\n{body_text(message)}".strip()
    return text[:max_chars]
