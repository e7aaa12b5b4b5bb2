"""Typed batches passed between DataModules and methods.

Every DataModule yields one of these types; methods unpack them by field name, never by position.
"""

from typing import NamedTuple

from torch import Tensor


class Labeled(NamedTuple):
    """Inputs with one integer class label each.

    ``x`` is uint8 ``(B, C, H, W)`` from the DataModule and the normalized float network input
    after ``BaseMethod.on_after_batch_transfer``; ``y`` is int64 ``(B,)``.
    """

    x: Tensor
    y: Tensor


class Tokens(NamedTuple):
    """A chunk of ``B`` parallel token streams for next-token prediction.

    ``x`` and ``y`` are int64 ``(B, T)``; ``y`` is ``x`` shifted one step ahead in each stream
    (``y[:, t]`` is the token after ``x[:, t]``). Consecutive batches of one epoch continue the
    same streams, so a recurrent model may carry its hidden state from one batch to the next.
    """

    x: Tensor
    y: Tensor


class Views(NamedTuple):
    """Several augmented views of the same images, for self-supervised methods.

    ``views`` holds V normalized float tensors ``(B, C, H, W)``, view ``v`` of image ``i`` at
    ``views[v][i]``; ``y`` is the images' int64 labels ``(B,)``, used only by the online linear
    probe that monitors the representation.
    """

    views: tuple[Tensor, ...]
    y: Tensor


class Unlabeled(NamedTuple):
    """Inputs whose labels the method must not train on.

    ``x`` is uint8 ``(B, C, H, W)`` from the DataModule. ``y_hidden`` int64 ``(B,)`` are the true
    labels, hidden from training and kept only to log how accurate pseudo-labels are.
    """

    x: Tensor
    y_hidden: Tensor


class Semi(NamedTuple):
    """One semi-supervised training step: a labelled and an unlabelled batch (usually larger)."""

    labeled: Labeled
    unlabeled: Unlabeled


class SemiViews(NamedTuple):
    """A :class:`Semi` batch after the device-side augmentation of a two-view method.

    ``labeled`` holds normalized inputs; ``target_view`` and ``student_view`` are two augmented,
    normalized views ``(B, C, H, W)`` of the same unlabelled images: the targets come from the
    first (FixMatch's weak view, Mean Teacher's teacher input), the model is trained on the second
    (FixMatch's strong view, Mean Teacher's student input). ``y_hidden`` as in :class:`Unlabeled`.
    """

    labeled: Labeled
    target_view: Tensor
    student_view: Tensor
    y_hidden: Tensor


class Tagged(NamedTuple):
    """Images with weak multi-label targets: hashtags (:mod:`deeprecipe.data.hashtag_data`).

    ``x`` as in :class:`Labeled`; ``tags`` bool ``(B, T)`` multi-hot over the ``T`` targets of the
    label space (designed: the classes; raw: every tag); ``y_hidden`` int64 ``(B,)`` the true
    classes, never trained on, kept to monitor class accuracy.
    """

    x: Tensor
    tags: Tensor
    y_hidden: Tensor


class PseudoLabeled(NamedTuple):
    """Labelled and teacher-labelled images mixed in one batch, for self-training students.

    ``x`` as in :class:`Labeled`; ``target`` float ``(B, K)``: one-hot for labelled images and
    hard pseudo-labels, the teacher's probabilities for soft ones; ``y_hidden`` int64 ``(B,)``
    the true classes (of pseudo-labelled images kept only for monitoring); ``is_pseudo`` bool
    ``(B,)`` marks the teacher-labelled images.
    """

    x: Tensor
    target: Tensor
    y_hidden: Tensor
    is_pseudo: Tensor
