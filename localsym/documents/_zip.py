"""Open a DOCX or EPUB zip only after checking what it would unpack to: a zip bomb posing as a
document is refused before a byte is inflated. Python's zipfile never inflates a member past
its declared size (and fails the CRC if the data holds more), so the declared sizes are a cap."""

from __future__ import annotations

import io
import zipfile
import zlib

from localsym.documents._types import MAX_UNPACKED_BYTES, MAX_ZIP_MEMBERS, DocumentError, Source


def open_zip(src: Source, what: str) -> zipfile.ZipFile:
    """The zip in ``src``, its members' declared sizes checked against the caps."""
    try:
        z = zipfile.ZipFile(io.BytesIO(src) if isinstance(src, bytes) else src)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise DocumentError(f"truncated or damaged {what} (not a readable zip)") from None
    infos = z.infolist()
    total = sum(i.file_size for i in infos)
    if len(infos) > MAX_ZIP_MEMBERS or total > MAX_UNPACKED_BYTES:
        z.close()
        raise DocumentError(
            f"refused: would unpack to {total / 2**20:.0f} MiB in {len(infos)} files "
            f"(cap {MAX_UNPACKED_BYTES >> 20} MiB; a zip bomb?)"
        )
    return z


def read_member(z: zipfile.ZipFile, name: str, what: str) -> bytes:
    """One member's bytes; a damaged member is a DocumentError."""
    try:
        return z.read(name)
    except KeyError:
        raise DocumentError(f"damaged {what}: {name} is missing") from None
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError):
        raise DocumentError(f"damaged {what}: {name} cannot be unpacked") from None
