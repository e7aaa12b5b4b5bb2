"""Character-level text data, the language-model method (truncated BPTT) and the sampling CLI."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import QUIET
from deeprecipe.batches import Tokens
from deeprecipe.data import CharTextDataModule
from deeprecipe.data.text import (
    FORTUNES_DIR,
    UNKNOWN_ID,
    CharVocabulary,
    fortune_files,
    split_blocks,
)
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError
from deeprecipe.methods import LanguageModel
from deeprecipe.models import RecurrentNet
from deeprecipe.sample import load_language_model
from deeprecipe.sample import main as sample_main
from deeprecipe.train import run

WORDS = "the quick brown fox jumps over a lazy dog and then sleeps in warm sun"
# per experiment: overrides that make its model tiny; the wiring is the same
TINY_MODEL = {
    "char_rnn": ["model.hidden_size=24", "model.embed_dim=8"],
    "char_lstm": ["model.hidden_size=24", "model.embed_dim=8"],
    "char_gru": ["model.hidden_size=24", "model.embed_dim=8"],
    "char_transformer": ["model.d_model=16", "model.num_layers=1", "model.max_len=16"],
}


def write_text(path: Path, chars: int = 6000, seed: int = 0) -> Path:
    rng, words = random.Random(seed), WORDS.split()
    lines = []
    while sum(map(len, lines)) < chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + ".\n")
    path.write_text("".join(lines)[:chars], encoding="utf-8")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write_text(tmp_path / "corpus.txt")


def tiny_data(path: Path, **kwargs) -> CharTextDataModule:
    settings = {"vocab_size": 32, "seq_len": 8, "batch_size": 3, "eval_batch_size": 2}
    datamodule = CharTextDataModule(path=str(path), **{**settings, **kwargs})
    datamodule.setup("fit")
    return datamodule


def tiny_method(vocab_size: int = 32) -> LanguageModel:
    backbone = RecurrentNet("lstm", vocab_size=vocab_size, embed_dim=8, hidden_size=16)
    return LanguageModel(
        backbone,
        vocab_size,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        scheduler=lambda optimizer, **_: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1),
        sample_length=20,
    )


# ------------------------------------------------------------------------------------- data
def test_vocabulary_from_training_split_with_unknown_id(tmp_path):
    # the last 10% (val + test) hold characters the training block never shows
    text = "abcabcabd" * 20 + "QQZZ" * 5
    datamodule = tiny_data(write_bytes(tmp_path / "t.txt", text.encode()), seq_len=4)
    vocabulary = datamodule.vocabulary
    assert vocabulary is not None and len(vocabulary) == 5  # <unk> a b c d
    assert vocabulary.decode(torch.arange(1, 5)) == "abcd"
    assert datamodule.val is not None and set(datamodule.val.tolist()) == {UNKNOWN_ID}
    assert vocabulary.decode(vocabulary.encode("dab?")) == "dab\ufffd"
    # the table kept in checkpoints gives back the same vocabulary
    table = vocabulary.table()
    assert table.shape == (32,) and table[0] == -1 and (table[5:] == -1).all()
    assert torch.equal(CharVocabulary.from_table(table).codepoints, vocabulary.codepoints)
    # capped: <unk> plus the most frequent characters; the rest become <unk>
    capped = CharVocabulary.from_text("aaaabbbcc d", size=3)
    assert capped.decode(capped.encode("abcd")) == "ab\ufffd\ufffd"


def test_contiguous_splits_per_file_and_fortune_format(tmp_path):
    text = write_text(tmp_path / "one.txt", chars=2000).read_text()
    train, val, test = tiny_data(tmp_path / "one.txt").read_splits()
    assert train + val + test == text
    assert (len(train), len(val), len(test)) == (1800, 100, 100)
    # a fortunes folder: `%` lines become blank lines, .dat indexes and .u8 links are skipped
    folder = tmp_path / "fortunes"
    folder.mkdir()
    for name in ("alpha", "beta"):
        body = "".join(f"{name} saying {i}\nsecond line\n%\n" for i in range(40))
        (folder / name).write_text(body)
        (folder / f"{name}.dat").write_bytes(b"\x00\x01binary index")
        (folder / f"{name}.u8").symlink_to(folder / name)
    assert [p.name for p in fortune_files(folder)] == ["alpha", "beta"]
    datamodule = CharTextDataModule(fortunes_dir=str(folder), seq_len=4, batch_size=2)
    train, val, test = datamodule.read_splits()
    assert "%" not in train + val + test and "\n\n" in train
    # each file is cut into its own 90/5/5 blocks, so every file is in every split
    blocks = [
        split_blocks((folder / name).read_text().replace("\n%\n", "\n\n"), 0.05, 0.05)
        for name in ("alpha", "beta")
    ]
    assert (train, val, test) == tuple(a + b for a, b in zip(*blocks, strict=True))


def test_bptt_batches_continue_streams_across_batches(text_file):
    datamodule = tiny_data(text_file)
    assert datamodule.train is not None and datamodule.val is not None
    batches = list(datamodule.train_dataloader())
    assert all(isinstance(b, Tokens) and b.x.shape == (3, 8) for b in batches)
    for previous, current in itertools.pairwise(batches):
        assert torch.equal(current.x[:, 0], previous.y[:, -1])  # each stream goes on
    x = torch.cat([b.x for b in batches], dim=1)  # (3, steps)
    y = torch.cat([b.y for b in batches], dim=1)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs one step ahead
    stream_len = len(datamodule.train) // 3
    for stream in range(3):  # stream s is the s-th contiguous third of the training text
        start = stream * stream_len
        assert torch.equal(x[stream], datamodule.train[start : start + x.shape[1]])
    # evaluation keeps the last, shorter chunk: every character but each stream's first is a target
    val_batches = list(datamodule.val_dataloader())
    assert sum(b.y.numel() for b in val_batches) == 2 * (len(datamodule.val) // 2 - 1)


def test_invalid_utf8_names_the_file_and_offset(tmp_path):
    bad = write_bytes(tmp_path / "latin1.txt", "caf\u00e9 au lait".encode("latin-1") * 50)
    with pytest.raises(CorruptDataError, match=r"latin1\.txt is not valid UTF-8.*offset 3.*iconv"):
        tiny_data(bad)


def test_missing_or_short_corpus_names_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install fortunes"):
        CharTextDataModule(fortunes_dir=str(tmp_path / "nowhere")).prepare_data()
    with pytest.raises(DataNotFoundError, match="data.path="):
        CharTextDataModule(path=str(tmp_path / "missing.txt")).setup()
    short = write_text(tmp_path / "short.txt", chars=300)
    with pytest.raises(ConfigError, match="data.batch_size=64.*lower"):
        CharTextDataModule(path=str(short), batch_size=64, seq_len=8).setup()
    with pytest.raises(ConfigError, match="val_fraction"):
        CharTextDataModule(val_fraction=0.0)


@pytest.mark.skipif(not fortune_files(Path(FORTUNES_DIR)), reason="apt-get install fortunes")
def test_fortunes_corpus():
    datamodule = CharTextDataModule()
    train, val, _ = datamodule.read_splits()
    assert len(train) > 2_000_000 and len(val) > 100_000 and "\n%\n" not in train
    vocabulary = CharVocabulary.from_text(train, 128)
    assert 60 < len(vocabulary) <= 128
    assert (vocabulary.encode(val) != UNKNOWN_ID).float().mean() > 0.999


# ----------------------------------------------------------------------------- the method
def test_state_carried_and_detached_across_chunks():
    torch.manual_seed(0)
    method = tiny_method(vocab_size=12)
    x = torch.randint(0, 12, (2, 10))  # two chunks of 5 steps
    y = torch.randint(0, 12, (2, 10))
    method._step(Tokens(x[:, :5], y[:, :5]), "train")
    state = method._states["train"]
    assert isinstance(state, tuple) and all(s.grad_fn is None for s in state)  # (h, c) detached

    method.zero_grad()
    method._step(Tokens(x[:, 5:], y[:, 5:]), "train").backward()
    truncated = [p.grad.clone() for p in method.parameters()]
    # carried: the second chunk continues the first, like one pass over the whole sequence
    logits_whole, _ = method(x)
    logits_second, _ = method(x[:, 5:], state)
    assert torch.allclose(logits_second, logits_whole[:, 5:], atol=1e-6)
    # detached: the gradient equals the one through the second chunk alone, and differs from
    # full backpropagation through both chunks
    method.zero_grad()
    F.cross_entropy(logits_second.flatten(0, 1), y[:, 5:].flatten()).backward()
    assert all(
        torch.allclose(a, p.grad) for a, p in zip(truncated, method.parameters(), strict=True)
    )
    method.zero_grad()
    F.cross_entropy(logits_whole[:, 5:].flatten(0, 1), y[:, 5:].flatten()).backward()
    assert not torch.allclose(truncated[0], next(method.parameters()).grad)
    method.on_train_epoch_start()
    assert "train" not in method._states  # a new epoch starts from zeros


def test_bits_per_char_is_cross_entropy_over_ln2(text_file, tmp_path):
    torch.manual_seed(0)
    datamodule = tiny_data(text_file)
    method = tiny_method()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    metrics = trainer.validate(method, datamodule=datamodule, verbose=False)[0]
    # reference: every validation character in one pass per stream (no chunks)
    assert datamodule.val is not None
    streams = datamodule.val[: len(datamodule.val) // 2 * 2].view(2, -1)
    with torch.no_grad():
        logits, _ = method.eval()(streams[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), streams[:, 1:].flatten()).item()
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-4)
    assert metrics["val/bpc"] == pytest.approx(loss / math.log(2), rel=1e-4)
    assert metrics["val/ppl"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    # the method took the data's vocabulary, so it can decode its own samples
    assert torch.equal(method.codepoints, datamodule.vocabulary.table())


def test_bad_method_inputs_name_the_fix(make_cfg):
    backbone = RecurrentNet("gru", vocab_size=16, hidden_size=8)
    with pytest.raises(ConfigError, match="method.vocab_size"):
        LanguageModel(backbone, 32, optimizer=torch.optim.Adam, scheduler=None)
    with pytest.raises(ConfigError, match="model=rnn, lstm, gru or char_transformer"):
        LanguageModel(instantiate(make_cfg().model), 16, torch.optim.Adam, scheduler=None)
    with pytest.raises(ConfigError, match="aug=none"):
        augment = instantiate(make_cfg("aug=standard").aug)
        LanguageModel(backbone, 16, torch.optim.Adam, scheduler=None, augment=augment)
    method = LanguageModel(backbone, 16, optimizer=torch.optim.Adam, scheduler=None)
    with pytest.raises(CorruptDataError, match="no vocabulary"):
        method.generate("hi", 5)


@pytest.mark.parametrize("experiment", list(TINY_MODEL))
def test_fast_dev_run_each_sequence_model(make_cfg, text_file, tmp_path, experiment):
    cfg = make_cfg(
        f"+experiment={experiment}",
        f"data.path={text_file}",
        "data.seq_len=16",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "method.sample_length=30",
        *TINY_MODEL[experiment],
    )
    datamodule = instantiate(cfg.data)
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    before = [p.detach().clone() for p in method.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(method, datamodule=datamodule)
    assert any(not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True))
    for name in ("val/loss", "val/bpc", "val/ppl", "val/acc", "train/bpc"):
        assert math.isfinite(float(trainer.callback_metrics[name])), name
    text = method.generate("the ", 25, temperature=0.5)
    assert text.startswith("the ") and len(text) == 29 and "\ufffd" not in text
    assert not (tmp_path / "samples.txt").exists()  # fast_dev_run writes nothing


def test_transformer_samples_within_the_chunk_length_it_trained_on():
    """Positions past the trained chunks are untrained: sampling rereads at most that many."""
    torch.manual_seed(0)
    backbone = instantiate(
        {
            "_target_": "deeprecipe.models.CausalTransformer",
            "vocab_size": 12,
            "d_model": 16,
            "num_heads": 2,
            "num_layers": 1,
            "max_len": 32,
        }
    )
    method = LanguageModel(backbone, 12, optimizer=torch.optim.Adam, scheduler=None)
    method.codepoints[1:] = torch.arange(97, 108)  # id 0 <unk>, then "a".."k"
    assert int(method.trained_length) == 0  # untrained: the whole table
    seen: list[int] = []
    hook = method.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    method.generate("abc", 40)
    assert max(seen) == 32
    method.training_step(Tokens(torch.randint(0, 12, (2, 8)), torch.randint(0, 12, (2, 8))), 0)
    method.training_step(Tokens(torch.randint(0, 12, (2, 5)), torch.randint(0, 12, (2, 5))), 1)
    assert int(method.trained_length) == 8  # the longest chunk, not the last
    seen.clear()
    method.generate("abc", 40)
    hook.remove()
    assert max(seen) == 8
    # saved with the weights; a checkpoint from before the buffer existed loads as unknown (0)
    state = method.state_dict()
    assert int(state["trained_length"]) == 8
    del state["trained_length"]
    method.load_state_dict(state)
    assert int(method.trained_length) == 0


# ---------------------------------------------------------------------- run, then sample
def test_train_then_sample_cli(make_cfg, text_file, tmp_path, capsys):
    cfg = make_cfg(
        "+experiment=char_lstm",
        f"data.path={text_file}",
        "data.seq_len=16",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        *TINY_MODEL["char_lstm"],
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        *QUIET,
    )
    metrics = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert {"val/bpc", "val/ppl", "test/bpc", "test/ppl"} <= metrics.keys()
    assert "val_bpc" in Path(metrics["best_ckpt"]).name
    samples = (run_dir / "samples.txt").read_text()  # one per validation epoch of training
    assert samples.startswith("--- epoch 0, step 2") and samples.count("--- epoch") == 1
    # as a Hydra run leaves it: the composed config next to checkpoints/
    saved = cfg.copy()
    with open_dict(saved):
        del saved["hydra"]
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    capsys.readouterr()

    sample_main([f"ckpt={run_dir}/checkpoints/last.ckpt", "prime=the quick ", "length=40"])
    printed = capsys.readouterr().out
    assert printed.startswith("the quick ") and len(printed) == len("the quick ") + 40 + 1
    again = [f"ckpt={run_dir}/checkpoints/last.ckpt", "prime=the quick ", "length=40"]
    sample_main(again)
    assert capsys.readouterr().out == printed  # seeded: the same sample twice

    # the chunk length it trained on is in the checkpoint; an older checkpoint without it
    # takes it from the run's config (data.seq_len)
    assert int(load_language_model(run_dir / "checkpoints" / "last.ckpt").trained_length) == 16
    old = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    del old["state_dict"]["trained_length"]
    torch.save(old, run_dir / "checkpoints" / "old.ckpt")
    assert int(load_language_model(run_dir / "checkpoints" / "old.ckpt").trained_length) == 16

    with pytest.raises(SystemExit):
        sample_main([f"ckpt={tmp_path}/nothing.ckpt"])
    assert "DataNotFoundError: No checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample_main(["checkpoint=x"])
    assert "Unknown argument" in capsys.readouterr().err
    assert json.loads((run_dir / "metrics.json").read_text())["val/bpc"] > 0
