"""Read character vectors out of an R package's lazy-load database, without R.

CRAN packages installed from Debian (``r-cran-*``) keep their datasets in ``data/Rdata.rdb``
with an index ``data/Rdata.rdx``. The index is a gzip-compressed serialized R list whose
``variables`` element maps each dataset name to ``(offset, length)`` in the ``.rdb`` file; each
record there is a 4-byte big-endian uncompressed size followed by the zlib stream of one
serialized object (R's XDR serialization, format version 2 or 3).

Only what text datasets need is decoded: character, integer, double and logical vectors, lists,
pair lists (attributes), symbols and references. Anything else raises
:class:`~deeprecipe.errors.CorruptDataError` naming the type, so a wrong file fails loudly
instead of yielding garbage. The format is described in R's ``src/main/serialize.c`` and in
"R Internals", section 1.8 (serialization formats).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeprecipe.errors import CorruptDataError, DataNotFoundError

# SEXP types (R Internals, 1.1.1) and the serializer's special codes (serialize.c)
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
NA_INTEGER = -(2**31)
IS_OBJECT, HAS_ATTR, HAS_TAG = 1 << 8, 1 << 9, 1 << 10
LATIN1_MASK = 1 << 2


@dataclass
class RVector:
    """An R vector: its ``values`` and its attributes (names, class, ...) by name."""

    values: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Unserializes one XDR-format R object from ``data``."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source
        self.refs: list[Any] = []

    def fail(self, what: str) -> CorruptDataError:
        return CorruptDataError(
            f"{self.source}: {what} at byte {self.pos}; it is not an R serialization this reader "
            "understands (XDR character/numeric vectors and lists). Reinstall the package, or "
            "give the text as a UTF-8 file with data.path=FILE."
        )

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise self.fail(f"truncated data (needed {size} more bytes)")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def read_int(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise self.fail("no XDR serialization header 'X\\n'")
        version = self.read_int()
        self.read_int(), self.read_int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.read_int())  # native encoding name
        elif version != 2:
            raise self.fail(f"serialization format version {version} (2 or 3 expected)")

    def item(self) -> Any:
        flags = self.read_int()
        kind, levels = flags & 0xFF, flags >> 12
        if kind == NILVALUE_SXP or kind in (GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.read_int()
            if not 0 < index <= len(self.refs):
                raise self.fail(f"reference {index} to an object not read yet")
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            length = self.read_int()
            if length == -1:
                return None  # NA_character_
            raw = self.take(length)
            return raw.decode("latin-1" if levels & LATIN1_MASK else "utf-8", errors="replace")
        if kind == LISTSXP:
            return self.pairlist(flags)
        attributes_follow = bool(flags & HAS_ATTR)
        if kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.length())]
        elif kind in (INTSXP, LGLSXP):
            count = self.length()
            ints = struct.unpack(f">{count}i", self.take(4 * count))
            values = [None if v == NA_INTEGER else v for v in ints]
            if kind == LGLSXP:
                values = [None if v is None else bool(v) for v in values]
        elif kind == REALSXP:
            count = self.length()
            values = list(struct.unpack(f">{count}d", self.take(8 * count)))
        else:
            raise self.fail(f"R object type {kind}")
        vector = RVector(values)
        if attributes_follow:
            vector.attributes = self.pairlist_dict(self.item())
        return vector

    def length(self) -> int:
        length = self.read_int()
        if length == -1:  # long vector: two more ints
            upper, lower = self.read_int(), self.read_int()
            length = (upper << 32) + lower
        if length < 0:
            raise self.fail(f"negative vector length {length}")
        return length

    def pairlist(self, flags: int) -> list[tuple[str | None, Any]]:
        """A pair list as (tag, value) pairs; its own attributes are read and dropped."""
        pairs: list[tuple[str | None, Any]] = []
        while True:
            if flags & HAS_ATTR:
                self.item()
            tag = self.item() if flags & HAS_TAG else None
            pairs.append((tag, self.item()))
            flags = self.read_int()
            if flags & 0xFF != LISTSXP:
                if flags & 0xFF != NILVALUE_SXP:
                    raise self.fail(f"pair list ending in type {flags & 0xFF}")
                return pairs

    @staticmethod
    def pairlist_dict(pairs: Any) -> dict[str, Any]:
        return {tag: value for tag, value in pairs or [] if tag is not None}


def unserialize(data: bytes, source: str = "R data") -> Any:
    """The R object serialized (XDR) in ``data``: :class:`RVector`, pair list or None."""
    reader = _Reader(data, source)
    reader.header()
    return reader.item()


def _inflate(record: bytes, source: str) -> bytes:
    """An ``.rdb`` record: 4-byte size, then zlib (or a type byte and bzip2/xz/none)."""
    size = int(struct.unpack(">I", record[:4])[0])
    body = record[4:]
    try:
        if body[:1] == b"Z":
            out = lzma.decompress(body[1:])
        elif body[:1] == b"2":
            out = bz2.decompress(body[1:])
        elif body[:1] == b"0":
            out = body[1:]
        else:
            out = zlib.decompress(body)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as error:
        raise CorruptDataError(f"{source}: a record does not decompress ({error}).") from error
    if len(out) != size:
        raise CorruptDataError(
            f"{source}: a record holds {len(out)} bytes, its header says {size}."
        )
    return out


def lazyload_index(rdx: Path) -> dict[str, tuple[int, int]]:
    """The ``(offset, length)`` of every object named in a lazy-load index ``.rdx``."""
    try:
        raw = rdx.read_bytes()
    except OSError as error:
        raise DataNotFoundError(f"Cannot read {rdx}: {error}.") from error
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else _inflate(raw, str(rdx))
    except (OSError, EOFError) as error:
        raise CorruptDataError(f"{rdx} does not decompress ({error}).") from error
    index = unserialize(data, str(rdx))
    elements = index.attributes.get("names") if isinstance(index, RVector) else None
    if not isinstance(elements, RVector) or "variables" not in elements.values:
        raise CorruptDataError(f"{rdx} is not a lazy-load index (no 'variables' element).")
    variables = index.values[elements.values.index("variables")]
    names = variables.attributes["names"].values
    return {
        name: (int(where.values[0]), int(where.values[1]))
        for name, where in zip(names, variables.values, strict=True)
    }


def lazyload_object(rdb: Path, offset: int, length: int) -> Any:
    """The object stored at ``offset`` (``length`` bytes) of a lazy-load database ``.rdb``."""
    try:
        with rdb.open("rb") as file:
            file.seek(offset)
            record = file.read(length)
    except OSError as error:
        raise DataNotFoundError(f"Cannot read {rdb}: {error}.") from error
    if len(record) != length:
        raise CorruptDataError(f"{rdb} is truncated: {length} bytes expected at {offset}.")
    return unserialize(_inflate(record, str(rdb)), str(rdb))


def read_character_vector(database: Path, name: str) -> list[str | None]:
    """The character vector ``name`` of a lazy-load database (``database`` without suffix)."""
    index = lazyload_index(database.with_suffix(".rdx"))
    if name not in index:
        raise DataNotFoundError(
            f"{database}.rdb has no object {name!r}; it holds {', '.join(sorted(index))}."
        )
    obj = lazyload_object(database.with_suffix(".rdb"), *index[name])
    if not isinstance(obj, RVector) or not all(v is None or isinstance(v, str) for v in obj.values):
        raise CorruptDataError(f"{database}.rdb: {name!r} is not a character vector.")
    return obj.values
