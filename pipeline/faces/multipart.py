"""The plain multipart uploads of ``POST /predict``, read in one pass over the body.

``serve`` answers most requests on this short path: what a browser, ``curl -F``, ``requests`` or
``httpx`` send for ``files=...``, one part per file, each with a quoted file name (or one in UTF-8,
``filename*=UTF-8''...``). Anything else (another field, another encoding, a transfer encoding, a
preamble, a body cut short) is left to the web framework's full parser: :func:`files_of` then answers
``None``, never a guess.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_BOUNDARY = re.compile(rb'boundary=(?:"([^"\r\n]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_DISPOSITION = re.compile(rb'form-data; *name="([^"\\]*)"; *(?:filename="([^"\\]*)"|filename\*=UTF-8\'\'([^\s;"]+))\Z',
                          re.IGNORECASE)


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, else None."""
    if not content_type.lower().startswith(b"multipart/form-data"):
        return None
    m = _BOUNDARY.search(content_type)
    return (m.group(1) or m.group(2)) if m else None


def _file_name(head: bytes, field: bytes) -> str | None:
    """The file name of a part whose headers are ``head``, when it is a plain file of ``field``."""
    name = None
    for line in head.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        key = key.strip().lower()
        if not sep:
            return None
        if key == b"content-disposition":
            m = _DISPOSITION.match(value.strip())
            if not m or m.group(1) != field or not (m.group(2) or m.group(3)):
                return None
            name = m.group(2) or unquote_to_bytes(m.group(3))  # RFC 5987: filename*=UTF-8''%C3%BC.png
        elif key != b"content-type":  # e.g. Content-Transfer-Encoding: the full parser's business
            return None
    try:
        return name.decode("utf-8") if name is not None else None
    except UnicodeDecodeError:
        return None


def files_of(content_type: bytes, body: bytes, field: bytes = b"files") -> list[tuple[str, bytes]] | None:
    """``[(file name, bytes)]`` of a plain multipart body whose every part is a file of ``field``; None
    when the body is anything else (the full parser decides what it is)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    dash = b"--" + boundary
    if not body.startswith(dash + b"\r\n"):
        return None
    files, pos = [], len(dash) + 2
    while True:
        end = body.find(b"\r\n" + dash, pos)
        head_end = body.find(b"\r\n\r\n", pos, end)
        if end < 0 or head_end < 0:
            return None
        name = _file_name(body[pos:head_end], field)
        if name is None:
            return None
        files.append((name, body[head_end + 4:end]))
        pos = end + 2 + len(dash)
        tail = body[pos:pos + 2]
        if tail == b"--":
            return files
        if tail != b"\r\n":
            return None
        pos += 2
