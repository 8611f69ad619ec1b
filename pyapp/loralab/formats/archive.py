"""Reading the members we need from a zip someone gave us, within bounds.

A zip is untrusted input: its directory can claim sizes that are not the real ones, entries can
overlap (one compressed stream counted many times: a "zip bomb"), members can be encrypted,
truncated or use a compression Python lacks. So only the members asked for are read, each
decompressed with a cap on the bytes actually produced, and every zipfile/zlib failure becomes
one ArchiveError naming the archive and the member.
"""

from __future__ import annotations

import io
import zipfile
import zlib

from ..errors import UserError, short

MAX_ENTRIES = 10_000


class ArchiveError(UserError):
    """A zip that cannot be read safely; the message names the archive and, where known, the member."""


def _check_layout(zf: zipfile.ZipFile, where: str) -> None:
    """No two members' data may overlap, and the directory may not be absurdly long."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{where}: holds {len(infos):,} entries (at most {MAX_ENTRIES:,} are read)")
    spans = sorted((info.header_offset, info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size,
                    info.filename) for info in infos)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ArchiveError(f"{where}: entries {short(first)} and {short(second)} overlap; the zip is malformed")


def read_members(data, where: str, wanted, limit: int) -> dict[str, bytes]:
    """{base name: bytes} of the members whose base name is in `wanted` (other members are never
    decompressed). `data` is the zip's bytes or a path; `limit` caps each member's real size."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ArchiveError(f"{where}: not a valid zip file ({exc or 'malformed'})") from None
    out = {}
    with zf:
        _check_layout(zf, where)
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if info.is_dir() or base not in wanted:
                continue
            if base in out:
                raise ArchiveError(f"{where}: holds {base} twice")
            if info.file_size > limit:
                raise ArchiveError(f"{where}: {info.filename} is {info.file_size:,} bytes (at most {limit:,} are read)")
            try:
                with zf.open(info) as member:
                    blob = member.read(limit + 1)
            except RuntimeError as exc:  # encrypted members
                raise ArchiveError(f"{where}: {short(info.filename)} cannot be read ({exc})") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError) as exc:
                raise ArchiveError(f"{where}: {short(info.filename)} is damaged or uses an unsupported "
                                   f"compression ({exc or type(exc).__name__})") from None
            if len(blob) > limit:
                raise ArchiveError(f"{where}: {info.filename} unpacks to more than {limit:,} bytes")
            out[base] = blob
    return out
