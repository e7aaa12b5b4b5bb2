"""Label noise models and the hashtag simulator: requested rates within sampling error, seeded."""

from __future__ import annotations

import pytest
import torch

from deeprecipe.data.fashion_mnist import CLASS_NAMES
from deeprecipe.data.hashtags import (
    build_vocabulary,
    design_label_space,
    label_space_noise,
    simulate_hashtags,
)
from deeprecipe.data.labels import (
    FASHION_MNIST_CONFUSIONS,
    apply_transition,
    confusion_group_transition,
    instance_dependent_noise,
    nearest_centroid_scores,
    pair_flip_transition,
    realized_transition,
    symmetric_transition,
)
from deeprecipe.errors import ConfigError

K = 10
N = 100_000  # 10k per class: a transition entry's standard error is at most 0.005
TOLERANCE = 0.02  # 4 standard errors


def clean_labels(n: int = N) -> torch.Tensor:
    return torch.arange(n) % K


def draw(transition: torch.Tensor, seed: int = 0):
    return apply_transition(clean_labels(), transition, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "transition",
    [
        symmetric_transition(K, 0.4),
        pair_flip_transition(K, 0.3),
        confusion_group_transition(K, 0.45, FASHION_MNIST_CONFUSIONS),
    ],
    ids=["symmetric", "pair_flip", "fashion_confusions"],
)
def test_transition_noise_matches_request_and_is_seeded(transition):
    assert torch.allclose(transition.sum(dim=1), torch.ones(K, dtype=transition.dtype))
    noisy = draw(transition)
    assert noisy.labels.shape == (N,) and noisy.labels.dtype == torch.int64
    assert torch.allclose(noisy.transition, transition, atol=TOLERANCE)
    assert torch.equal(noisy.transition, realized_transition(clean_labels(), noisy.labels, K))
    assert torch.equal(draw(transition, seed=0).labels, noisy.labels)
    assert not torch.equal(draw(transition, seed=1).labels, noisy.labels)


def test_transition_presets():
    symmetric = symmetric_transition(K, 0.4)
    assert symmetric[0, 0] == pytest.approx(0.6) and symmetric[0, 1] == pytest.approx(0.4 / 9)
    pair = pair_flip_transition(K, 0.3)
    assert pair[9, 0] == pytest.approx(0.3) and pair[9, 9] == pytest.approx(0.7)
    fashion = confusion_group_transition(K, 0.45, FASHION_MNIST_CONFUSIONS)
    shirt, tshirt, sneaker, boot, bag = 6, 0, 7, 9, 8
    assert CLASS_NAMES[shirt] == "Shirt" and CLASS_NAMES[boot] == "Ankle boot"
    assert fashion[shirt, tshirt] == pytest.approx(0.15) and fashion[sneaker, boot] == 0.225
    assert fashion[shirt, sneaker] == 0 and fashion[bag, bag] == 1  # bags stay clean


def test_bad_noise_settings_raise():
    with pytest.raises(ConfigError, match="noise rate"):
        symmetric_transition(K, 1.5)
    with pytest.raises(ConfigError, match="two groups"):
        confusion_group_transition(K, 0.2, [(0, 1), (1, 2)])
    with pytest.raises(ConfigError, match="at least two"):
        confusion_group_transition(K, 0.2, [(3,)])
    with pytest.raises(ConfigError, match="sum to 1"):
        apply_transition(clean_labels(10), torch.eye(K) * 0.5, torch.Generator())


def test_instance_dependent_noise_follows_confusion():
    generator = torch.Generator().manual_seed(0)
    labels = clean_labels()
    # half the examples are hard (60% of the score on wrong classes), half easy (10%); the wrong
    # mass always sits on the next class, so every flip must go there
    wrong_mass = torch.where(torch.arange(N) < N // 2, 0.6, 0.1)  # (N,)
    scores = torch.zeros(N, K)
    scores[torch.arange(N), labels] = 1 - wrong_mass
    scores[torch.arange(N), (labels + 1) % K] = wrong_mass
    noisy = instance_dependent_noise(labels, scores, 0.2, generator)
    flipped = noisy.labels != labels
    assert flipped.float().mean().item() == pytest.approx(0.2, abs=0.01)
    # flip probability proportional to confusion: 0.2 * 0.6 / 0.35 vs 0.2 * 0.1 / 0.35
    assert flipped[: N // 2].float().mean().item() == pytest.approx(0.2 * 0.6 / 0.35, abs=0.01)
    assert flipped[N // 2 :].float().mean().item() == pytest.approx(0.2 * 0.1 / 0.35, abs=0.01)
    assert torch.equal(noisy.labels[flipped], (labels[flipped] + 1) % K)
    again = instance_dependent_noise(labels, scores, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again.labels, noisy.labels)


def test_nearest_centroid_scores_are_probabilities():
    images = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8)
    labels = clean_labels(200)
    scores = nearest_centroid_scores(images, labels, K)
    assert scores.shape == (200, K)
    assert torch.allclose(scores.sum(dim=1), torch.ones(200))


RATES = {"missing_rate": 0.2, "synonym_rate": 0.3, "incorrect_rate": 0.25, "nonvisual_rate": 0.5}


def test_hashtag_rates_match_settings():
    vocabulary = build_vocabulary(CLASS_NAMES, synonyms_per_class=2, num_nonvisual=5)
    assert vocabulary.tags[:3] == ("#tshirttop", "#tshirttop_syn1", "#tshirttop_syn2")
    assert "#tbt" in vocabulary.tags and len(vocabulary.tags) == K * 3 + 5
    labels = clean_labels(50_000)
    tags = simulate_hashtags(labels, vocabulary, torch.Generator().manual_seed(0), **RATES)
    tag_class = vocabulary.tag_class  # (V,)
    own = tags & (tag_class[None, :] == labels[:, None])  # (N, V) tags of the true class
    other = tags & (tag_class[None, :] >= 0) & (tag_class[None, :] != labels[:, None])
    nonvisual = tags & (tag_class[None, :] < 0)
    has_own = own.any(dim=1)
    synonym = own[:, vocabulary.class_tags[:, 1:].flatten()].any(dim=1)  # written as a synonym
    tolerance = 0.015
    assert 1 - has_own.float().mean().item() == pytest.approx(0.2, abs=tolerance)
    assert synonym[has_own].float().mean().item() == pytest.approx(0.3, abs=tolerance)
    assert other.any(dim=1).float().mean().item() == pytest.approx(0.25, abs=tolerance)
    assert nonvisual.any(dim=1).float().mean().item() == pytest.approx(0.5, abs=tolerance)
    assert own.sum(dim=1).max() <= 1 and other.sum(dim=1).max() <= 1
    again = simulate_hashtags(labels, vocabulary, torch.Generator().manual_seed(0), **RATES)
    assert torch.equal(again, tags)


def test_label_space_design_merges_synonyms_and_drops_nonvisual():
    vocabulary = build_vocabulary(CLASS_NAMES, synonyms_per_class=2, num_nonvisual=5)
    labels = clean_labels(50_000)
    tags = simulate_hashtags(labels, vocabulary, torch.Generator().manual_seed(1), **RATES)
    targets = design_label_space(tags, vocabulary)
    assert targets.shape == (50_000, K) and targets.dtype == torch.bool
    # an image tagged only with a synonym of its class and #tbt gets exactly its class
    one = torch.zeros(1, len(vocabulary.tags), dtype=torch.bool)
    one[0, vocabulary.tags.index("#sneaker_syn2")] = True
    one[0, vocabulary.tags.index("#tbt")] = True
    assert design_label_space(one, vocabulary).nonzero().tolist() == [[0, 7]]
    noise = label_space_noise(targets, labels)
    missing, incorrect = RATES["missing_rate"], RATES["incorrect_rate"]
    assert noise.missing == pytest.approx(missing, abs=0.015)
    assert noise.with_wrong == pytest.approx(incorrect, abs=0.015)
    assert noise.exact == pytest.approx((1 - missing) * (1 - incorrect), abs=0.015)
    assert noise.empty == pytest.approx(missing * (1 - incorrect), abs=0.015)


def test_bad_hashtag_rates_raise():
    vocabulary = build_vocabulary(CLASS_NAMES)
    with pytest.raises(ConfigError, match="missing_rate"):
        simulate_hashtags(clean_labels(10), vocabulary, torch.Generator(), missing_rate=2.0)
