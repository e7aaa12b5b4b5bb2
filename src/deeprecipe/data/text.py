"""Character-level text for language models, batched for truncated backpropagation through time.

The text is cut into contiguous train/val/test blocks (per source file, so that every file is
seen in every split), encoded with a vocabulary built from the training block alone, and laid out
for truncated BPTT: each split's token stream is reshaped into ``B`` parallel streams, and batch
``i`` is the ``i``-th chunk of ``seq_len`` steps of every stream. Consecutive batches therefore
continue the same streams, and a recurrent model can carry its hidden state across them.

The default corpus is Debian's ``fortunes`` package (plain-text files under
``/usr/share/games/fortunes``, one fortune after another separated by ``%`` lines); ``path``
takes any UTF-8 text file instead, and :class:`AustenDataModule` reads Jane Austen's six novels
from Debian's ``r-cran-janeaustenr`` (no R needed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deeprecipe.batches import Tokens
from deeprecipe.data.base import ResumableLoader, SequentialResumeSampler, training_position
from deeprecipe.data.rdata import read_character_vector
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError

log = logging.getLogger(__name__)

FORTUNES_DIR = "/usr/share/games/fortunes"
UNKNOWN_ID = 0
# what the unknown id decodes to: U+FFFD, the Unicode replacement character
UNKNOWN_CHAR = "\ufffd"
_SEPARATOR = re.compile(r"^%$", flags=re.MULTILINE)


def codepoints(text: str) -> Tensor:
    """The Unicode code points of ``text`` as int64 ``(N,)``, without a Python loop."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64))


@dataclass(frozen=True)
class CharVocabulary:
    """Characters <-> ids: id 0 is ``<unk>``, ids ``1..K`` are ``codepoints`` in ascending order.

    ``size`` (the model's output width) may exceed ``K + 1``; the ids above ``K`` are unused.
    :meth:`table` packs the vocabulary into one ``(size,)`` tensor that a model keeps as a buffer,
    so its checkpoints can decode what it generates.
    """

    codepoints: Tensor  # (K,) int64, ascending
    size: int

    @classmethod
    def from_text(cls, text: str, size: int) -> CharVocabulary:
        """``<unk>`` plus the ``size - 1`` most frequent characters of ``text``."""
        if size < 2:
            raise ConfigError(f"data.vocab_size={size}; it must be at least 2 (<unk> + a char).")
        unique, counts = torch.unique(codepoints(text), return_counts=True)  # ascending
        # stable: among equally frequent characters the lower code point wins
        by_count = torch.sort(counts, descending=True, stable=True).indices
        return cls(torch.sort(unique[by_count[: size - 1]]).values, size)

    @classmethod
    def from_table(cls, table: Tensor) -> CharVocabulary:
        """Inverse of :meth:`table`."""
        return cls(table[table >= 0].cpu(), len(table))

    def __len__(self) -> int:
        """Ids in use: the characters and ``<unk>``."""
        return len(self.codepoints) + 1

    def table(self) -> Tensor:
        """Code point of every id as int64 ``(size,)``; -1 for ``<unk>`` and unused ids."""
        table = torch.full((self.size,), -1, dtype=torch.int64)
        table[1 : len(self)] = self.codepoints
        return table

    def encode(self, text: str) -> Tensor:
        """Ids of the characters of ``text`` as int64 ``(N,)``; unknown characters get id 0."""
        points = codepoints(text)  # (N,)
        if len(self.codepoints) == 0:
            return torch.full_like(points, UNKNOWN_ID)
        index = torch.searchsorted(self.codepoints, points).clamp_(max=len(self.codepoints) - 1)
        known = self.codepoints[index] == points
        return torch.where(known, index + 1, UNKNOWN_ID)

    def decode(self, ids: Tensor) -> str:
        """Text of int ``(N,)`` ids; ``<unk>`` and unused ids become U+FFFD."""
        table = self.table()[ids.cpu()].tolist()
        return "".join(chr(point) if point >= 0 else UNKNOWN_CHAR for point in table)


def read_utf8(path: Path) -> str:
    """The text of ``path``; :class:`CorruptDataError` with the byte offset if it is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataNotFoundError(f"Cannot read {path}: {error}.") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptDataError(
            f"{path} is not valid UTF-8: byte 0x{raw[error.start]:02x} at byte offset "
            f"{error.start} ({error.reason}). Convert the file, e.g. `iconv -f latin1 -t utf-8 "
            f"{path} > fixed.txt`, and set data.path to the result."
        ) from error


def fortune_files(folder: Path) -> list[Path]:
    """The fortune text files of ``folder``: regular files, without strfile's ``.dat`` indexes.

    The ``.u8`` names are symbolic links to the same files and are skipped.
    """
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat"
    )


def split_blocks(text: str, val_fraction: float, test_fraction: float) -> tuple[str, str, str]:
    """Contiguous (train, val, test) blocks: the first, middle and last part of ``text``."""
    train_end = round(len(text) * (1.0 - val_fraction - test_fraction))
    val_end = round(len(text) * (1.0 - test_fraction))
    return text[:train_end], text[train_end:val_end], text[val_end:]


class TokenChunks(Dataset):
    """Chunks of ``streams`` for truncated BPTT: item ``i`` is steps ``[i T, (i + 1) T)``.

    Args:
        stream: token ids ``(N,)``; cut into ``num_streams`` contiguous rows (the tail that does
            not fill a row is dropped).
        num_streams: parallel streams ``B`` (the global batch size).
        seq_len: steps per chunk ``T``.
        drop_last: drop the final chunk when it is shorter than ``seq_len``.
        rank, world: this process keeps rows ``[rank B / world, (rank + 1) B / world)`` of the
            ``B`` streams (DDP: the processes together hold the streams of one process).
    """

    def __init__(
        self,
        stream: Tensor,
        num_streams: int,
        seq_len: int,
        drop_last: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        steps = len(stream) // num_streams
        streams = stream[: num_streams * steps].view(num_streams, steps)  # (B, L)
        share = num_streams // world
        self.streams = streams[rank * share : (rank + 1) * share]  # (B / world, L)
        self.seq_len = seq_len
        targets = steps - 1  # the last step of a stream has no next token
        self.num_chunks = targets // seq_len if drop_last else -(-targets // seq_len)

    def __len__(self) -> int:
        return self.num_chunks

    def __getitem__(self, index: int) -> Tokens:
        if not 0 <= index < self.num_chunks:
            raise IndexError(index)
        start = index * self.seq_len
        stop = min(start + self.seq_len, self.streams.shape[1] - 1)
        inputs = self.streams[:, start:stop]  # (B, T)
        targets = self.streams[:, start + 1 : stop + 1]  # (B, T), one step ahead
        return Tokens(inputs, targets)


class CharTextDataModule(L.LightningDataModule):
    """Character-level language modelling data from the fortunes or any UTF-8 text file.

    Args:
        path: a UTF-8 text file to use instead of the fortunes; None reads ``fortunes_dir``.
        fortunes_dir: folder of the Debian ``fortunes`` files, whose ``%`` separator lines
            become blank lines.
        vocab_size: ids of the vocabulary: ``<unk>`` plus the ``vocab_size - 1`` most frequent
            characters of the training split. A config value (not counted from the data) so that
            models can be built from the config alone; extra ids stay unused.
        seq_len: steps per chunk, the length of truncated backpropagation through time.
        batch_size: parallel training streams.
        eval_batch_size: parallel validation and test streams; defaults to ``batch_size``.
        val_fraction: share of each file held out (contiguously, after the training block) for
            validation.
        test_fraction: share of each file held out at its end for testing.
        num_workers: DataLoader worker processes; chunks are tensor slices and need none.
        pin_memory: pin host memory for faster copies to a GPU.

    Batches must arrive in order for the streams to continue: the loaders never shuffle. The
    batch sizes are global: under DDP each of the W processes carries ``batch_size / W`` of the
    streams (both sizes must be multiples of W), so that a step trains on the same characters
    whatever the number of processes.
    """

    def __init__(
        self,
        path: str | None = None,
        fortunes_dir: str = FORTUNES_DIR,
        vocab_size: int = 128,
        seq_len: int = 128,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ConfigError(f"data.vocab_size={vocab_size}; it must be at least 2.")
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value}; it must be a positive integer.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size={eval_batch_size}; it must be positive.")
        if min(val_fraction, test_fraction) <= 0 or val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}; both "
                "must be positive and sum to less than 1."
            )
        self.path = Path(path).expanduser() if path else None
        self.fortunes_dir = Path(fortunes_dir)
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.vocabulary: CharVocabulary | None = None
        self.train: Tensor | None = None  # (N,) int64 token ids of each split
        self.val: Tensor | None = None
        self.test: Tensor | None = None

    @property
    def source_name(self) -> str:
        return str(self.path) if self.path else f"fortunes ({self.fortunes_dir})"

    def source_files(self) -> list[Path]:
        """The files to read; :class:`DataNotFoundError` naming the fix when there are none."""
        if self.path is not None:
            if not self.path.is_file():
                raise DataNotFoundError(
                    f"data.path={self.path} is not a file; point it at a UTF-8 text file."
                )
            return [self.path]
        files = fortune_files(self.fortunes_dir)
        if not files:
            raise DataNotFoundError(
                f"No fortune files in {self.fortunes_dir}. Install them with "
                "`sudo apt-get install fortunes` (Debian/Ubuntu), or set data.path=A_TEXT_FILE."
            )
        return files

    def documents(self) -> list[str]:
        """The texts of the corpus, each split into blocks on its own (one per source file)."""
        texts = []
        for file in self.source_files():
            text = read_utf8(file)
            if self.path is None:
                text = _SEPARATOR.sub("", text)  # a `%` line becomes a blank line
            texts.append(text)
        return texts

    def read_splits(self) -> tuple[str, str, str]:
        """(train, val, test) text: every document cut into contiguous blocks, concatenated."""
        parts: tuple[list[str], list[str], list[str]] = ([], [], [])
        for text in self.documents():
            for blocks, block in zip(
                parts, split_blocks(text, self.val_fraction, self.test_fraction), strict=True
            ):
                blocks.append(block)
        train, val, test = ("".join(blocks) for blocks in parts)
        return train, val, test

    def prepare_data(self) -> None:
        self.source_files()

    def setup(self, stage: str | None = None) -> None:
        if self.vocabulary is not None:
            return
        train_text, val_text, test_text = self.read_splits()
        vocabulary = CharVocabulary.from_text(train_text, self.vocab_size)
        train, val, test = (vocabulary.encode(t) for t in (train_text, val_text, test_text))
        self._check_length(train, self.batch_size, "training", "batch_size", self.seq_len + 1)
        self._check_length(val, self.eval_batch_size, "validation", "eval_batch_size", 2)
        self._check_length(test, self.eval_batch_size, "test", "eval_batch_size", 2)
        self.vocabulary, self.train, self.val, self.test = vocabulary, train, val, test
        unknown = [int((ids == UNKNOWN_ID).sum()) for ids in (train, val, test)]
        log.info(
            "%s: %d train / %d val / %d test characters; vocabulary %d of %d ids; <unk> in "
            "train/val/test: %d/%d/%d",
            self.source_name,
            len(train),
            len(val),
            len(test),
            len(vocabulary),
            self.vocab_size,
            *unknown,
        )

    def _check_length(
        self, ids: Tensor, streams: int, split: str, batch_key: str, steps: int
    ) -> None:
        if len(ids) < streams * steps:
            raise ConfigError(
                f"The {split} split of {self.source_name} has {len(ids)} characters, too few for "
                f"data.{batch_key}={streams} streams of {steps} steps; lower data.{batch_key} or "
                "data.seq_len, or use a longer text."
            )

    def _loader(self, ids: Tensor | None, streams: int, train: bool) -> DataLoader:
        if ids is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if streams % world:
            key = "batch_size" if train else "eval_batch_size"
            raise ConfigError(
                f"data.{key}={streams} streams are global, split over {world} processes; make "
                f"it a multiple of {world}."
            )
        chunks = TokenChunks(ids, streams, self.seq_len, drop_last=train, rank=rank, world=world)
        # in order on every process (the order carries the streams from one batch to the next;
        # the processes differ in their streams, not their chunks): a DistributedSampler, so
        # that Lightning does not shard the chunks; resumable, so that a run resumed mid-epoch
        # continues with the chunks it had not trained on
        return ResumableLoader(
            chunks,
            sampler=SequentialResumeSampler(len(chunks)),
            batch_size=None,  # every item already is a batch of B streams
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            position=(lambda: training_position(self.trainer)) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, self.eval_batch_size, train=False)


AUSTEN_BOOKS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)
# where R installs the package, then where `make data` unpacks the Debian package without R
AUSTEN_DIRS = (
    "/usr/lib/R/site-library/janeaustenr",
    "~/.cache/deeprecipe/r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr",
)


class AustenDataModule(CharTextDataModule):
    """Jane Austen's six novels (4.0 M characters) from Debian's ``r-cran-janeaustenr``.

    The package stores each novel as an R character vector (one element per line of the Project
    Gutenberg text) in its lazy-load database ``data/Rdata.rdb``; :mod:`deeprecipe.data.rdata`
    reads it without R. Each novel's lines are joined with newlines and cut into train/val/test
    blocks on its own, so every novel is in every split. ``make data`` fetches the package with
    ``apt-get download`` and unpacks it with ``dpkg -x`` (R itself is not needed).

    Args:
        austen_dir: the installed package folder (holding ``data/Rdata.rdb``); None tries
            :data:`AUSTEN_DIRS` in order.
        books: which novels, by their R names (default: all six, in publication order).
        **kwargs: the :class:`CharTextDataModule` arguments; its ``path`` (a UTF-8 text file)
            replaces the novels, as it replaces the fortunes.
    """

    def __init__(
        self,
        austen_dir: str | None = None,
        books: list[str] | tuple[str, ...] = AUSTEN_BOOKS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(books) - set(AUSTEN_BOOKS))
        if unknown or not books:
            raise ConfigError(
                f"data.books={list(books)}: {unknown or 'empty'}; choose among "
                f"{', '.join(AUSTEN_BOOKS)}."
            )
        self.austen_dir = Path(austen_dir).expanduser() if austen_dir else None
        self.books = tuple(books)

    def database(self) -> Path:
        """``data/Rdata`` of the package (the ``.rdb``/``.rdx`` pair, without suffix)."""
        candidates = (
            [self.austen_dir] if self.austen_dir else [Path(d).expanduser() for d in AUSTEN_DIRS]
        )
        for folder in candidates:
            if (folder / "data" / "Rdata.rdb").is_file():
                return folder / "data" / "Rdata"
        raise DataNotFoundError(
            "Jane Austen's novels were not found in "
            f"{', '.join(str(c) for c in candidates)}. Run `make data` (it runs `apt-get download "
            "r-cran-janeaustenr` and unpacks it with `dpkg -x` into ~/.cache/deeprecipe), or "
            "install the R package, or set data.austen_dir=FOLDER_OF_THE_PACKAGE."
        )

    @property
    def source_name(self) -> str:
        if self.path is not None:
            return super().source_name
        return f"Jane Austen's novels ({self.austen_dir or 'r-cran-janeaustenr'})"

    def source_files(self) -> list[Path]:
        if self.path is not None:  # data.path=FILE: any text file instead, as for every text data
            return super().source_files()
        database = self.database()
        return [database.with_suffix(".rdb"), database.with_suffix(".rdx")]

    def documents(self) -> list[str]:
        if self.path is not None:
            return super().documents()
        database = self.database()
        return [
            "\n".join(line or "" for line in read_character_vector(database, book)) + "\n"
            for book in self.books
        ]
