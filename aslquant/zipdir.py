"""A zip's end record and central directory, read with bounds before anything else parses them.

``zipfile.ZipFile`` and torch's checkpoint reader both build an object per central-directory
entry as soon as they open an archive, and neither has a limit: a 105 MB zip of 2 million
directory entries costs ``zipfile`` 1.1 GB before a caller can count them. This module reads
the end-of-central-directory record (and its ZIP64 form) from the last 64 KiB of the file,
refuses a directory that is too large or lists too many entries, and then walks the directory
itself with ``struct``, stopping at the first entry over the limit. Only then may ``zipfile``
or ``torch.load`` open the archive.

The record is located exactly as ``zipfile`` locates it (the last signature in the final
64 KiB, ZIP64 locator immediately before it, the same "concatenated prefix" arithmetic), so
the entries checked here are the entries ``zipfile`` will see.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from aslquant.errors import InputError

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory (22 bytes)
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")  # ZIP64 end of central directory locator (20 bytes)
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # ZIP64 end of central directory record (56 bytes)
_EOCD64_SIG = b"PK\x06\x06"
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header (46 bytes)
_ENTRY_SIG = b"PK\x01\x02"
#: How far from the end zipfile looks for the end record (a comment is at most 64 KiB).
_COMMENT_WINDOW = 1 << 16
#: Highest "version needed to extract" zipfile accepts (6.3); above it zipfile raises.
_MAX_EXTRACT_VERSION = 63
_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class ZipEnd:
    """What the end record declares, with positions made absolute like ``zipfile`` does."""

    entries: int
    directory_size: int
    #: Absolute position of the central directory (declared offset plus any prefix).
    directory_start: int
    #: Bytes before the archive proper (a self-extracting stub); 0 for a plain zip.
    prefix: int
    #: Absolute position of the end record (the ZIP64 record when there is one).
    end_offset: int
    comment_length: int
    #: Where the classic end record and its comment end; the file size unless bytes follow.
    records_end: int
    zip64: bool
    file_size: int


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One central-directory entry, sizes taken from the ZIP64 extra field when present."""

    name: str
    flags: int
    method: int
    compressed_size: int
    size: int
    #: Absolute position of the member's local header.
    local_offset: int
    external_attr: int

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


def _file_size(fh: BinaryIO) -> int:
    fh.seek(0, 2)
    return fh.tell()


def read_end(fh: BinaryIO, label: str) -> ZipEnd:
    """The end-of-central-directory record; ``InputError`` if there is none or it is corrupt."""
    size = _file_size(fh)
    tail_start = max(0, size - _EOCD.size - _COMMENT_WINDOW)
    fh.seek(tail_start)
    tail = fh.read()
    if len(tail) >= _EOCD.size and tail[-_EOCD.size :][:4] == _EOCD_SIG and tail[-2:] == b"\0\0":
        at = len(tail) - _EOCD.size
    else:
        at = tail.rfind(_EOCD_SIG)
        if at < 0 or len(tail) - at < _EOCD.size:
            raise InputError(f"{label}: not a valid zip archive (no end-of-directory record)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(tail, at)
    end_offset = tail_start + at
    records_end = end_offset + _EOCD.size + comment
    zip64 = False
    record_declared_at = 0
    if end_offset >= _LOCATOR.size:
        fh.seek(end_offset - _LOCATOR.size)
        locator = fh.read(_LOCATOR.size)
        if locator[:4] == _LOCATOR_SIG:
            _, l_disk, record_declared_at, disks = _LOCATOR.unpack(locator)
            if l_disk != 0 or disks > 1:
                raise InputError(f"{label}: zip archives spanning several disks are not supported")
            record_at = end_offset - _LOCATOR.size - _EOCD64.size
            if record_at >= 0:
                fh.seek(record_at)
                record = fh.read(_EOCD64.size)
                if len(record) == _EOCD64.size and record[:4] == _EOCD64_SIG:
                    fields = _EOCD64.unpack(record)
                    disk, cd_disk = fields[4], fields[5]
                    entries, cd_size, cd_offset = fields[7], fields[8], fields[9]
                    end_offset = record_at
                    zip64 = True
    if disk != 0 or cd_disk != 0:
        raise InputError(f"{label}: zip archives spanning several disks are not supported")
    # zipfile's arithmetic: bytes prepended to the archive shift every offset by `prefix`.
    # With ZIP64 the directory ends where the ZIP64 record starts, i.e. at `end_offset`.
    prefix = end_offset - cd_size - cd_offset
    if zip64 and record_declared_at + prefix != end_offset:
        # zipfile assumes the ZIP64 record sits right before its locator; other readers
        # (torch's miniz) follow the locator. Refuse an archive where the two disagree.
        raise InputError(f"{label}: not a valid zip archive (ZIP64 locator points elsewhere)")
    start = cd_offset + prefix
    if start < 0 or cd_size < 0 or start + cd_size > size:
        raise InputError(f"{label}: not a valid zip archive (central directory out of range)")
    return ZipEnd(
        entries=entries,
        directory_size=cd_size,
        directory_start=start,
        prefix=prefix,
        end_offset=end_offset,
        comment_length=comment,
        records_end=records_end,
        zip64=zip64,
        file_size=size,
    )


def _zip64_sizes(
    extra: bytes, size: int, csize: int, offset: int, label: str
) -> tuple[int, int, int]:
    """Sizes and offset from the ZIP64 extra field, as ``zipfile.ZipInfo._decodeExtra`` reads."""
    pos = 0
    while len(extra) - pos >= 4:
        kind, length = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + length > len(extra):
            raise InputError(f"{label}: corrupt zip directory (extra field overruns its entry)")
        if kind == 0x0001:
            data = extra[pos + 4 : pos + 4 + length]
            values = [v for (v,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8])]
            try:
                if size in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
                    size = values.pop(0)
                if csize == 0xFFFFFFFF:
                    csize = values.pop(0)
                if offset == 0xFFFFFFFF:
                    offset = values.pop(0)
            except IndexError:
                raise InputError(f"{label}: corrupt zip directory (short ZIP64 field)") from None
        pos += 4 + length
    return size, csize, offset


def read_directory(
    fh: BinaryIO, label: str, *, max_entries: int, max_directory_bytes: int
) -> tuple[ZipEnd, list[ZipEntry]]:
    """The end record and every central-directory entry, within the two limits.

    Refuses (``InputError`` naming ``label``) before reading the directory when its declared
    size or entry count is over the limit, and while walking it as soon as one entry more than
    ``max_entries`` is found (the walk follows the declared size, as ``zipfile`` does, so an
    end record that understates the count cannot hide entries). Directory entries count.
    """
    end = read_end(fh, label)
    if end.entries > max_entries:
        raise InputError(
            f"{label}: zip lists {end.entries} entries (files and folders); "
            f"the limit is {max_entries}"
        )
    if end.directory_size > max_directory_bytes:
        raise InputError(
            f"{label}: zip central directory is {end.directory_size} bytes; "
            f"the limit is {max_directory_bytes} bytes"
        )
    fh.seek(end.directory_start)
    data = fh.read(end.directory_size)
    if len(data) != end.directory_size:
        raise InputError(f"{label}: not a valid zip archive (truncated central directory)")
    entries: list[ZipEntry] = []
    pos = 0
    while pos < len(data):
        if len(entries) >= max_entries:
            raise InputError(
                f"{label}: zip holds more than {max_entries} entries (files and folders); "
                f"its end record says {end.entries}"
            )
        if len(data) - pos < _ENTRY.size:
            raise InputError(f"{label}: not a valid zip archive (truncated central directory)")
        fields = _ENTRY.unpack_from(data, pos)
        if fields[0] != _ENTRY_SIG:
            raise InputError(f"{label}: not a valid zip archive (bad central directory entry)")
        extract_version, flags, method = fields[3], fields[5], fields[6]
        csize, size, name_len, extra_len, comment_len = fields[10:15]
        external_attr, offset = fields[17], fields[18]
        if extract_version > _MAX_EXTRACT_VERSION:
            raise InputError(
                f"{label}: zip needs version {extract_version / 10:.1f} to extract; "
                f"at most {_MAX_EXTRACT_VERSION / 10:.1f} is supported"
            )
        name_at = pos + _ENTRY.size
        extra_at = name_at + name_len
        pos = extra_at + extra_len + comment_len
        if pos > len(data):
            raise InputError(f"{label}: not a valid zip archive (truncated central directory)")
        raw_name = data[name_at:extra_at]
        try:
            name = raw_name.decode("utf-8" if flags & _UTF8_FLAG else "cp437")
        except UnicodeDecodeError:
            raise InputError(
                f"{label}: zip member name {raw_name[:60]!r} is marked UTF-8 but is not"
            ) from None
        size, csize, offset = _zip64_sizes(
            data[extra_at : extra_at + extra_len], size, csize, offset, label
        )
        entries.append(
            ZipEntry(
                name=name,
                flags=flags,
                method=method,
                compressed_size=csize,
                size=size,
                local_offset=offset + end.prefix,
                external_attr=external_attr,
            )
        )
    return end, entries
