"""Simulated hashtags as weak labels, and the label-space design that turns them into targets.

The lecture's Instagram pre-training (Mahajan et al. 2018; Ghadiyaram et al. 2019) learns from
the hashtags people write, which are noisy in known ways: the right concept under another name
(``#tee`` for T-shirt), tags with no visual content (``#tbt``), tags of things not in the image,
and the right tag missing. :func:`simulate_hashtags` draws such tag sets from clean labels with
configurable rates; :func:`design_label_space` is the step that maps raw tags to target classes
(keep class tags, merge synonyms into their class, drop non-visual tags) and
:func:`label_space_noise` measures the noise that survives it.

Tags of ``N`` images are a boolean multi-hot tensor ``(N, V)`` over a vocabulary of ``V`` tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from deeprecipe.errors import ConfigError

NON_VISUAL_TAGS = (
    "#tbt",
    "#love",
    "#instagood",
    "#photooftheday",
    "#happy",
    "#weekend",
    "#mood",
    "#follow",
)


@dataclass(frozen=True)
class HashtagVocabulary:
    """The tags and what each one means.

    ``tags`` names the ``V`` tags; ``tag_class`` int64 ``(V,)`` is the class a class tag or one of
    its synonyms stands for and -1 for a non-visual tag; ``class_tags`` int64 ``(K, 1 + S)`` lists
    per class its canonical tag then its ``S`` synonyms (indices into ``tags``).
    """

    tags: tuple[str, ...]
    tag_class: Tensor
    class_tags: Tensor

    @property
    def num_classes(self) -> int:
        return self.class_tags.shape[0]


def build_vocabulary(
    class_names: Sequence[str], synonyms_per_class: int = 2, num_nonvisual: int = 5
) -> HashtagVocabulary:
    """Canonical tag ``#name``, synthetic synonyms ``#name_syn1``.., then non-visual tags."""
    if synonyms_per_class < 0:
        raise ConfigError(f"synonyms_per_class={synonyms_per_class}; it must be >= 0.")
    if num_nonvisual < 0:
        raise ConfigError(f"num_nonvisual={num_nonvisual}; it must be >= 0.")
    tags: list[str] = []
    tag_class: list[int] = []
    for cls, name in enumerate(class_names):
        slug = "#" + re.sub(r"[^a-z0-9]+", "", name.lower())
        tags += [slug] + [f"{slug}_syn{j + 1}" for j in range(synonyms_per_class)]
        tag_class += [cls] * (1 + synonyms_per_class)
    extra = [f"#nonvisual{j + 1}" for j in range(max(0, num_nonvisual - len(NON_VISUAL_TAGS)))]
    nonvisual = [*NON_VISUAL_TAGS, *extra][:num_nonvisual]
    tags += nonvisual
    tag_class += [-1] * len(nonvisual)
    class_tags = torch.arange(len(class_names) * (1 + synonyms_per_class))
    return HashtagVocabulary(
        tuple(tags),
        torch.tensor(tag_class),
        class_tags.view(len(class_names), 1 + synonyms_per_class),
    )


def _class_tag(
    classes: Tensor, vocabulary: HashtagVocabulary, synonym_rate: float, generator: torch.Generator
) -> Tensor:
    """Tag index ``(N,)`` of each class in ``classes`` ``(N,)``: a synonym with ``synonym_rate``."""
    num_synonyms = vocabulary.class_tags.shape[1] - 1
    column = torch.zeros_like(classes)
    if num_synonyms:
        use_synonym = torch.rand(len(classes), generator=generator) < synonym_rate
        which = torch.randint(1, num_synonyms + 1, (len(classes),), generator=generator)
        column = torch.where(use_synonym, which, column)
    return vocabulary.class_tags[classes, column]


def simulate_hashtags(
    labels: Tensor,
    vocabulary: HashtagVocabulary,
    generator: torch.Generator,
    missing_rate: float = 0.2,
    synonym_rate: float = 0.3,
    incorrect_rate: float = 0.2,
    nonvisual_rate: float = 0.5,
) -> Tensor:
    """Multi-hot tags ``(N, V)`` bool of images with clean labels ``labels`` ``(N,)``.

    Each image independently: gets a tag of its true class unless missing (``missing_rate``),
    written as one of the class's synonyms with ``synonym_rate``; gets a tag of one other class,
    drawn uniformly, with ``incorrect_rate`` (also a synonym with ``synonym_rate``); gets one
    non-visual tag, drawn uniformly, with ``nonvisual_rate``.
    """
    rates = {
        "missing_rate": missing_rate,
        "synonym_rate": synonym_rate,
        "incorrect_rate": incorrect_rate,
        "nonvisual_rate": nonvisual_rate,
    }
    for key, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"hashtags {key}={rate}; it must be in [0, 1].")
    labels = labels.cpu()
    count, num_classes = len(labels), vocabulary.num_classes
    tags = torch.zeros(count, len(vocabulary.tags), dtype=torch.bool)  # (N, V)
    rows = torch.arange(count)
    present = torch.rand(count, generator=generator) >= missing_rate  # (N,)
    true_tag = _class_tag(labels, vocabulary, synonym_rate, generator)  # (N,)
    tags[rows[present], true_tag[present]] = True
    incorrect = torch.rand(count, generator=generator) < incorrect_rate  # (N,)
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    wrong_tag = _class_tag((labels + shift) % num_classes, vocabulary, synonym_rate, generator)
    tags[rows[incorrect], wrong_tag[incorrect]] = True
    nonvisual = torch.nonzero(vocabulary.tag_class < 0).flatten()  # (V_nonvisual,)
    if len(nonvisual):
        chatty = torch.rand(count, generator=generator) < nonvisual_rate  # (N,)
        pick = nonvisual[torch.randint(len(nonvisual), (count,), generator=generator)]
        tags[rows[chatty], pick[chatty]] = True
    return tags


def design_label_space(tags: Tensor, vocabulary: HashtagVocabulary) -> Tensor:
    """Multi-hot class targets ``(N, K)`` bool from raw tags ``(N, V)``.

    A class tag and its synonyms map to their class (merged), non-visual tags are dropped.
    """
    targets = torch.zeros(
        tags.shape[0], vocabulary.num_classes, dtype=torch.bool, device=tags.device
    )
    tag_class = vocabulary.tag_class.to(tags.device)
    visual = tag_class >= 0  # (V,)
    rows, columns = torch.nonzero(tags[:, visual], as_tuple=True)
    targets[rows, tag_class[visual][columns]] = True
    return targets


class LabelSpaceNoise(NamedTuple):
    """Noise left in designed targets, each a fraction of the ``N`` images.

    ``exact``: the targets are exactly the true class; ``missing``: the true class is not among
    them; ``with_wrong``: they include a wrong class; ``empty``: no target at all (such images
    are usually left out of training).
    """

    exact: float
    missing: float
    with_wrong: float
    empty: float


def label_space_noise(targets: Tensor, labels: Tensor) -> LabelSpaceNoise:
    """Compare designed targets ``(N, K)`` bool with the clean labels ``(N,)``."""
    truth = torch.nn.functional.one_hot(labels, targets.shape[1]).bool()  # (N, K)
    has_true = (targets & truth).any(dim=1)  # (N,)
    has_wrong = (targets & ~truth).any(dim=1)  # (N,)
    return LabelSpaceNoise(
        exact=(has_true & ~has_wrong).double().mean().item(),
        missing=(~has_true).double().mean().item(),
        with_wrong=has_wrong.double().mean().item(),
        empty=(~targets.any(dim=1)).double().mean().item(),
    )
