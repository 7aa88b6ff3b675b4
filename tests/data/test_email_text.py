"""Raw e-mails become subject + readable body text."""

import base64

from pipeline.data.email_text import email_to_text, html_to_text


def _mail(headers: str, body: str) -> bytes:
    return (headers.strip() + "\n\n" + body).encode("latin-1")


def test_plain_text_with_subject():
    raw = _mail("From: a@b\nSubject: Hello there\nContent-Type: text/plain", "Body line.\n")
    assert email_to_text(raw) == "Hello there\nBody line."


def test_quoted_printable_is_decoded():
    raw = _mail(
        "Subject: qp\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable",
        "Caf=E9 soft=\nbreak\n",
    )
    assert email_to_text(raw) == "qp\nCafé softbreak"


def test_base64_html_is_reduced_to_visible_text():
    html = "<html><head><style>p{}</style></head><body><p>Buy <b>now</b>!</p><script>x()</script></body></html>"
    body = base64.b64encode(html.encode()).decode()
    raw = _mail("Subject: Offer\nContent-Type: text/html\nContent-Transfer-Encoding: base64", body)
    assert email_to_text(raw) == "Offer\nBuy now !"


def test_multipart_prefers_plain_over_html():
    raw = _mail(
        'Subject: alt\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="XX"',
        "--XX\nContent-Type: text/plain\n\nplain words\n--XX\nContent-Type: text/html\n\n<p>html words</p>\n--XX--\n",
    )
    assert email_to_text(raw) == "alt\nplain words"


def test_encoded_subject_header():
    raw = _mail("Subject: =?utf-8?b?R3LDvMOfZQ==?=\nContent-Type: text/plain", "x")
    assert email_to_text(raw).startswith("Grüße")


def test_unknown_charset_does_not_crash():
    raw = _mail("Subject: s\nContent-Type: text/plain; charset=x-no-such-charset", "abc")
    assert email_to_text(raw) == "s\nabc"


def test_text_is_capped():
    raw = _mail("Subject: long\nContent-Type: text/plain", "a" * 1000)
    assert len(email_to_text(raw, max_chars=50)) == 50


def test_broken_html_keeps_what_parsed():
    assert html_to_text("<p>ok <b>fine") == "ok fine"
