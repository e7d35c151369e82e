"""Zip bombs: check a zip's members before anything inflates them (DOCX today; any zip-based format later).

A member larger than :data:`MAX_ZIP_MEMBER_BYTES`, a total above :data:`MAX_ZIP_TOTAL_BYTES`, a member that
inflates more than :data:`MAX_ZIP_RATIO` times (past 1 MiB), or too many members is a zip bomb. Declared sizes
can lie, and zipfile's whole-member ``read()`` inflates the entire stream before truncating it, so every
member is then inflated as a stream (output counted, not kept) and must stop within its declared size.
"""

from __future__ import annotations

import io
import zipfile
import zlib

from ingest.errors import LoadError

MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_MEMBER_BYTES = 32 * 1024 * 1024  # one part, inflated (a 1000-page document.xml is ~10 MB)
MAX_ZIP_TOTAL_BYTES = 128 * 1024 * 1024  # all parts, inflated
MAX_ZIP_RATIO = 100  # inflated / compressed, for members past 1 MiB (office XML deflates 5-20x)
_ZIP_RATIO_FLOOR = 1024 * 1024


def check_zip_members(data: bytes, what: str = "zip") -> None:
    """Refuse a zip bomb before anything parses the zip. Raises :class:`LoadError` naming the member and the
    limit. A damaged zip (not a bomb) is left to the caller's parser to report.

    Two passes: the declared sizes in the central directory (instant), then every member is inflated as a
    stream, its output counted and discarded, to prove it inflates to no more than it declares. The second
    pass matters: zipfile's ``read()`` of a whole member inflates the entire stream in one call before
    truncating it to the declared size, so a member declaring 4 KB that really inflates to 1 GiB would cost
    1 GiB and ~20 s. Its cost is bounded by the (already capped) declared sizes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        return
    if len(infos) > MAX_ZIP_MEMBERS:
        raise LoadError(f"zip bomb: the {what} has {len(infos)} parts (limit {MAX_ZIP_MEMBERS})")
    total = 0
    mib = 1024 * 1024
    for info in infos:
        size = info.file_size
        total += size
        if size > MAX_ZIP_MEMBER_BYTES:
            raise LoadError(
                f"zip bomb: {info.filename} in the {what} inflates to {size / mib:.0f} MiB "
                f"(limit {MAX_ZIP_MEMBER_BYTES // mib} MiB per part)"
            )
        if size > _ZIP_RATIO_FLOOR and size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise LoadError(
                f"zip bomb: {info.filename} in the {what} inflates {size / max(info.compress_size, 1):.0f}x "
                f"(limit {MAX_ZIP_RATIO}x)"
            )
        if total > MAX_ZIP_TOTAL_BYTES:
            raise LoadError(
                f"zip bomb: the {what}'s parts inflate to more than {MAX_ZIP_TOTAL_BYTES // mib} MiB"
            )
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise LoadError(f"{info.filename} in the {what} uses an unsupported zip compression method")
        if info.compress_type == zipfile.ZIP_DEFLATED and _inflated_size(data, info) > info.file_size:
            raise LoadError(
                f"zip bomb: {info.filename} in the {what} inflates past its declared size "
                f"({info.file_size} bytes)"
            )


def _inflated_size(data: bytes, info: zipfile.ZipInfo) -> int:
    """Bytes the member's deflate stream produces, stopping one byte past its declared size; -1 if its local
    header is unreadable (the parser reports that)."""
    offset = info.header_offset
    header = data[offset : offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return -1
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    start = offset + 30 + name_len + extra_len
    stream = memoryview(data)[start : start + info.compress_size]
    inflater = zlib.decompressobj(-15)
    limit = info.file_size + 1
    produced = 0
    step = 64 * 1024
    try:
        for pos in range(0, len(stream), step):
            pending = bytes(stream[pos : pos + step])
            while pending and produced < limit:
                produced += len(inflater.decompress(pending, min(step, limit - produced)))
                pending = inflater.unconsumed_tail
            if produced >= limit or inflater.eof:
                break
    except zlib.error:
        return -1
    return produced
