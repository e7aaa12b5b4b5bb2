"""The R lazy-load reader against databases written here by an independent XDR serializer."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import pytest

from deeprecipe.data import AustenDataModule
from deeprecipe.data.rdata import (
    RVector,
    lazyload_index,
    read_character_vector,
    unserialize,
)
from deeprecipe.data.text import AUSTEN_BOOKS, AUSTEN_DIRS
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError


# --- a minimal writer of R's XDR serialization (format 3), following R Internals 1.8 -------------
def _int(value: int) -> bytes:
    return struct.pack(">i", value)


def _charsxp(text: str | None) -> bytes:
    if text is None:
        return _int(9) + _int(-1)
    raw = text.encode("utf-8")
    return _int(9 | (1 << 3) << 12) + _int(len(raw)) + raw  # UTF-8 flag in the levels


def _strsxp(values: list[str | None], names: list[str] | None = None) -> bytes:
    flags = 16 | ((1 << 9) if names else 0)
    body = _int(flags) + _int(len(values)) + b"".join(_charsxp(v) for v in values)
    return body + (_attributes(names) if names else b"")


def _realsxp(values: list[float]) -> bytes:
    return _int(14) + _int(len(values)) + b"".join(struct.pack(">d", v) for v in values)


def _intsxp(values: list[int]) -> bytes:
    return _int(13) + _int(len(values)) + b"".join(_int(v) for v in values)


def _attributes(names: list[str], symbol_written: bool = False) -> bytes:
    # a pair list of one element tagged with the symbol `names`: LISTSXP with a tag
    tag = _int(255 | (1 << 8)) if symbol_written else _int(1) + _charsxp("names")
    return _int(2 | (1 << 10)) + tag + _strsxp(names) + _int(254)


def _vecsxp(items: list[bytes], names: list[str]) -> bytes:
    return _int(19 | (1 << 9)) + _int(len(items)) + b"".join(items) + _attributes(names, True)


def _serialize(body: bytes) -> bytes:
    return b"X\n" + _int(3) + _int(0x040200) + _int(0x030500) + _int(5) + b"UTF-8" + body


def write_database(folder: Path, objects: dict[str, bytes]) -> Path:
    """An ``Rdata.rdb``/``.rdx`` pair holding the serialized ``objects``; returns the stem."""
    records, offsets = b"", {}
    for name, body in objects.items():
        data = _serialize(body)
        record = struct.pack(">I", len(data)) + zlib.compress(data)
        offsets[name] = (len(records), len(record))
        records += record
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Rdata.rdb").write_bytes(records)
    names = list(offsets)
    variables = _int(19 | (1 << 9)) + _int(len(names))
    variables += b"".join(_intsxp(list(offsets[n])) for n in names)
    # the first `names` attribute writes the symbol; the later ones refer to it (REFSXP 1)
    variables += _int(2 | (1 << 10)) + _int(1) + _charsxp("names") + _strsxp(names) + _int(254)
    index = _vecsxp(
        [variables, _vecsxp([], []), _int(10) + _int(1) + _int(1)],
        ["variables", "references", "compressed"],
    )
    (folder / "Rdata.rdx").write_bytes(gzip.compress(_serialize(index)))
    return folder / "Rdata"


def test_vectors_round_trip() -> None:
    text = unserialize(_serialize(_strsxp(["It is a truth", None, "é ü"], names=["a", "b", "c"])))
    assert isinstance(text, RVector)
    assert text.values == ["It is a truth", None, "é ü"]
    assert text.attributes["names"].values == ["a", "b", "c"]
    assert unserialize(_serialize(_realsxp([1.5, -2.0]))).values == [1.5, -2.0]
    assert unserialize(_serialize(_intsxp([3, -(2**31)]))).values == [3, None]  # NA


def test_lazyload_database(tmp_path: Path) -> None:
    stem = write_database(
        tmp_path, {"emma": _strsxp(["EMMA", "", "By Jane Austen"]), "x": _realsxp([2.0])}
    )
    index = lazyload_index(stem.with_suffix(".rdx"))
    assert list(index) == ["emma", "x"]
    assert read_character_vector(stem, "emma") == ["EMMA", "", "By Jane Austen"]
    with pytest.raises(DataNotFoundError, match="no object 'persuasion'.*emma, x"):
        read_character_vector(stem, "persuasion")
    with pytest.raises(CorruptDataError, match="not a character vector"):
        read_character_vector(stem, "x")


def test_corrupt_database_names_the_file(tmp_path: Path) -> None:
    stem = write_database(tmp_path, {"emma": _strsxp(["EMMA"])})
    rdb = stem.with_suffix(".rdb")
    rdb.write_bytes(rdb.read_bytes()[:-3])  # truncated
    with pytest.raises(CorruptDataError, match="Rdata.rdb"):
        read_character_vector(stem, "emma")
    with pytest.raises(CorruptDataError, match="XDR serialization header"):
        unserialize(b"A\n" + _int(3))
    with pytest.raises(CorruptDataError, match="R object type 4"):
        unserialize(_serialize(_int(4)))  # an environment


def fake_austen(folder: Path) -> Path:
    books = {
        book: _strsxp([f"{book.upper()}", ""] + [f"line {i} of {book}" for i in range(200)])
        for book in AUSTEN_BOOKS
    }
    write_database(folder / "data", books)
    return folder


def test_austen_datamodule_splits_every_book(tmp_path: Path) -> None:
    folder = fake_austen(tmp_path / "janeaustenr")
    datamodule = AustenDataModule(
        austen_dir=str(folder), books=["emma", "persuasion"], seq_len=8, batch_size=2
    )
    datamodule.setup()
    assert datamodule.vocabulary is not None
    val = datamodule.vocabulary.decode(datamodule.val)
    train = datamodule.vocabulary.decode(datamodule.train)
    assert train.startswith("EMMA\n\nline 0 of emma")
    assert "of emma" in val and "of persuasion" in val and "of prideprejudice" not in train
    text = tmp_path / "own.txt"
    text.write_text("any text at all, " * 40)
    own = AustenDataModule(
        austen_dir=str(tmp_path / "none"), path=str(text), seq_len=8, batch_size=2
    )
    own.setup()  # data.path replaces the novels
    assert own.vocabulary is not None and "any text" in own.vocabulary.decode(own.train)
    with pytest.raises(ConfigError, match="data.books.*'hamlet'"):
        AustenDataModule(austen_dir=str(folder), books=["hamlet"])
    with pytest.raises(DataNotFoundError, match="make data"):
        AustenDataModule(austen_dir=str(tmp_path / "none")).prepare_data()


def _installed_austen() -> Path | None:
    for folder in AUSTEN_DIRS:
        if (Path(folder).expanduser() / "data" / "Rdata.rdb").is_file():
            return Path(folder).expanduser()
    return None


@pytest.mark.skipif(_installed_austen() is None, reason="make data (r-cran-janeaustenr)")
def test_real_austen_novels() -> None:
    datamodule = AustenDataModule(seq_len=16, batch_size=4)
    datamodule.setup()
    assert datamodule.vocabulary is not None
    total = sum(len(split) for split in (datamodule.train, datamodule.val, datamodule.test))
    assert 3_900_000 < total < 4_100_000
    assert "It is a truth universally acknowledged" in datamodule.vocabulary.decode(
        datamodule.train
    )
