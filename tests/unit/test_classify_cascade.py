"""Intent model: best label and top-3 kept when abstaining, per-language abstention thresholds,
the encoder cascade's slow path, splits by paraphrase family."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.classify.encoder import Encoder, Float32Array
from pipeline.classify.families import family_folds, family_split, paraphrase_families
from pipeline.classify.model import (
    CENTROID_WEIGHTS,
    UNKNOWN,
    IntentModel,
    TrainParams,
    _calibration_folds,
    _fit_centroid_weight,
    language_of,
    threshold_for_precision,
)
from pipeline.cli import main

TINY: dict[str, list[str]] = {
    "track_order": [
        "where is my order", "track my parcel please", "my package has not arrived",
        "what is the status of my order", "где мой заказ", "отследить посылку",
        "посылка не пришла", "статус заказа",
    ],
    "get_refund": [
        "i want my money back", "refund my purchase", "how do i get a refund",
        "give me a refund", "верните деньги", "хочу вернуть деньги",
        "оформите возврат денег", "как получить возврат",
    ],
    "recover_password": [
        "i forgot my password", "reset my password", "can't log in, lost password",
        "password recovery", "забыл пароль", "сбросить пароль",
        "не могу войти, забыл пароль", "восстановить пароль",
    ],
    "loyalty_points": [
        "my bonus points were not added", "loyalty card points missing",
        "no points for purchase", "check my loyalty balance", "не начислили бонусы",
        "не списались баллы", "бонусы не пришли", "баланс бонусной карты",
    ],
}  # fmt: skip


def _tiny(params: TrainParams) -> IntentModel:
    texts = [t for ts in TINY.values() for t in ts]
    labels = [label for label, ts in TINY.items() for _ in ts]
    return IntentModel.train(texts, labels, params=params)


def test_abstained_predictions_keep_the_best_label_and_top_three() -> None:
    # a floor no confidence reaches: every prediction abstains
    model = _tiny(TrainParams(holdout=0.0, encoder=None, min_threshold=0.999))
    preds = model.predict_batch(["where is my parcel", "верните мне деньги"])
    assert [p.best for p in preds] == ["track_order", "get_refund"]
    for p in preds:
        assert p.abstained and p.label == UNKNOWN and p.category == UNKNOWN
        assert p.best_category == p.best  # no categories given: the label is its category
        assert len(p.top) == 3 and p.top[0] == (p.best, p.confidence)
        confs = [c for _, c in p.top]
        assert confs == sorted(confs, reverse=True) and len({lab for lab, _ in p.top}) == 3


def test_each_language_uses_its_own_threshold() -> None:
    model = _tiny(TrainParams(holdout=0.0, encoder=None))
    texts = ["where is my order", "где мой заказ"]
    conf = [p.confidence for p in model.predict_batch(texts)]
    between = min(conf) / 2
    strict_ru = IntentModel(
        model._estimator,
        model.meta.model_copy(update={"thresholds": {"en": between, "ru": 1.0}}),
    )
    en, ru = strict_ru.predict_batch(texts)
    assert not en.abstained and en.label == "track_order"
    assert ru.abstained and ru.label == UNKNOWN and ru.best == "track_order"
    assert strict_ru.threshold_for("ru") == 1.0
    assert strict_ru.threshold_for("other") == model.threshold


def test_threshold_for_precision_is_the_lowest_reaching_the_target() -> None:
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, True, False, True, False])
    # accepted precision at each cut: 1, 1, 1, .75, .8, .67
    assert threshold_for_precision(conf, correct, 0.95, 0.0) == 0.9
    assert threshold_for_precision(conf, correct, 0.8, 0.0) == 0.7
    assert threshold_for_precision(conf, correct, 0.8, 0.75) == 0.75  # the floor wins
    none_right = np.zeros(6, dtype=bool)
    assert threshold_for_precision(conf, none_right, 0.95, 0.0) > 0.99  # nothing answered
    # with a confidence bound (Wilson, z standard errors) few answers prove less
    assert threshold_for_precision(conf, correct, 0.7, 0.0) == 0.7
    assert threshold_for_precision(conf, correct, 0.7, 0.0, z=1.0) == 0.9
    assert threshold_for_precision(conf, correct, 0.7, 0.0, z=3.0) > 0.99


def _noisy_bilingual(seed: int) -> tuple[list[str], list[str]]:
    """Four labels with their own vocabularies in English and Russian; a third of the Russian
    rows carry a random label, so Russian needs a higher threshold for the same precision."""
    rng = random.Random(seed)
    vocab = {
        "a": ("order parcel package courier", "заказ посылка курьер доставка"),
        "b": ("refund money return back", "возврат деньги вернуть сумма"),
        "c": ("password login reset access", "пароль вход сбросить доступ"),
        "d": ("bonus points card loyalty", "бонусы баллы карта скидка"),
    }
    filler = ("please", "hello", "today", "help", "пожалуйста", "здравствуйте", "сегодня")
    texts, labels = [], []
    for label, (en, ru) in vocab.items():
        for lang_words, noisy in ((en.split(), False), (ru.split(), True)):
            for _ in range(150):
                words = [*rng.sample(lang_words, 2), *rng.sample(filler, 2)]
                words.append(f"w{rng.randrange(10**6)}")
                rng.shuffle(words)
                texts.append(" ".join(words))
                labels.append(rng.choice("abcd") if noisy and rng.random() < 0.35 else label)
    return texts, labels


def test_training_tunes_a_threshold_per_language_on_held_out_families() -> None:
    texts, labels = _noisy_bilingual(0)
    model = IntentModel.train(
        texts, labels, params=TrainParams(encoder=None, target_precision=0.9, holdout=0.25)
    )
    held = model.meta.held_out
    assert held is not None
    assert set(model.meta.thresholds) == {"en", "ru"}
    assert model.meta.thresholds["ru"] > model.meta.thresholds["en"]
    assert held.by_language["en"].coverage > held.by_language["ru"].coverage
    assert held.by_language["en"].precision >= 0.9


class CountingEncoder:
    """Wraps an encoder and records every text it encodes."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> Float32Array:
        self.seen.extend(texts)
        return self.inner.encode(texts)


def test_cascade_takes_the_slow_path_only_when_the_fast_model_is_unsure() -> None:
    trained = _tiny(TrainParams(holdout=0.0))
    assert trained.encoder is not None and trained._slow is not None
    texts = ["where is my order", "забыл пароль", "qwerty zxcv", "лунный календарь рыбака"]
    fast_only = IntentModel(trained._estimator, trained.meta)
    fast_conf = [p.confidence for p in fast_only.predict_batch(texts)]
    cut = float(np.median(fast_conf))
    counting = CountingEncoder(trained.encoder)
    cascade = IntentModel(
        trained._estimator,
        trained.meta.model_copy(update={"cascade_threshold": cut, "cascade_thresholds": {}}),
        trained._slow,
        counting,
    )
    preds = cascade.predict_batch(texts)
    unsure = [t for t, c in zip(texts, fast_conf, strict=True) if c < cut]
    assert unsure and len(unsure) < len(texts)
    assert counting.seen == unsure
    assert [p.slow for p in preds] == [c < cut for c in fast_conf]
    for p, c in zip(preds, fast_conf, strict=True):
        if not p.slow:
            assert p.confidence == pytest.approx(c)  # the fast model's own decision


def test_family_split_keeps_near_duplicates_on_one_side() -> None:
    texts, labels = [], []
    rng = random.Random(1)
    for label in ("x", "y"):
        for fam in range(10):
            base = f"{label} family {fam} " + " ".join(f"t{rng.randrange(10**6)}" for _ in range(6))
            for k in range(4):
                texts.append(f"{base} please" if k % 2 else base + ("!" * k))
                labels.append(label)
    families = paraphrase_families(texts, labels)
    assert len(set(families)) == 20
    train, test = family_split(texts, labels, test_size=0.3, seed=0, families=families)
    assert len(train) + len(test) == len(texts)
    assert not {families[i] for i in train} & {families[i] for i in test}
    assert {labels[i] for i in test} == {"x", "y"}


def test_a_chain_of_small_rewordings_is_one_family() -> None:
    # each text differs from the next by one word of ten (Jaccard ≈ 0.8 with its neighbours);
    # the first and the last share one word
    words = [f"w{i}" for i in range(18)]
    chain = [" ".join(words[i : i + 10]) for i in range(9)]
    other = "completely unrelated sentence about something else entirely today"
    families = paraphrase_families([*chain, other], ["x"] * 10)
    assert len(set(families[:9])) == 1
    assert families[9] != families[0]


def test_cli_split_writes_whole_families_to_each_side(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = []
    for label in ("x", "y"):
        for fam in range(8):
            base = " ".join(f"{label}{fam}t{rng.randrange(10**6)}" for _ in range(8))
            rows += [{"text": base + suffix, "label": label} for suffix in ("", " ok", " ok!")]
    data = tmp_path / "all.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    assert main(["model", "split", "--data", str(data), "--train", str(train),
                 "--test", str(test), "--test-size", "0.25"]) == 0  # fmt: skip

    def bases(path: Path) -> set[str]:
        with path.open(encoding="utf-8") as fh:
            return {r["text"].split(" ok")[0] for r in csv.DictReader(fh)}

    assert bases(train) and bases(test) and not bases(train) & bases(test)
    assert len(bases(train) | bases(test)) == 16


def test_family_folds_are_disjoint_keep_families_whole_and_cover_every_label() -> None:
    texts, labels = [], []
    rng = random.Random(3)
    for label in ("x", "y", "z"):
        for fam in range(7):
            base = f"{label} family {fam} " + " ".join(f"t{rng.randrange(10**6)}" for _ in range(6))
            for k in range(1 + fam % 3):
                texts.append(base + ("!" * k))
                labels.append(label)
    texts.append("a single family label")
    labels.append("w")
    families = paraphrase_families(texts, labels)
    folds = family_folds(labels, families, folds=5, seed=0)
    held = [i for fold in folds for i in fold.tolist()]
    assert len(held) == len(set(held)) == len(texts) - 1  # every row once, but the lone family
    for fold in folds:
        inside = {families[i] for i in fold}
        outside = {families[i] for i in range(len(texts)) if i not in set(fold.tolist())}
        assert not inside & outside
        assert {labels[i] for i in fold} == {"x", "y", "z"}


def test_a_small_training_set_is_tuned_on_every_row_by_cross_validation() -> None:
    texts, labels = _noisy_bilingual(0)
    params = TrainParams(encoder=None, target_precision=0.9, holdout=0.25)
    one_part = IntentModel.train(
        texts, labels, params=params.model_copy(update={"calibration_rows": 0})
    )
    cross = IntentModel.train(texts, labels, params=params)  # 300 held-out rows < 1500
    assert one_part.meta.held_out is not None and cross.meta.held_out is not None
    assert one_part.meta.held_out.rows < len(texts) * 0.4
    assert cross.meta.held_out.rows == len(texts)


def test_cross_validation_fold_models_train_on_nine_tenths_of_the_rows() -> None:
    # a fold model about as sure as the refit model: its thresholds carry over to new text
    texts, labels = _noisy_bilingual(0)
    langs = [language_of(t) for t in texts]
    folds = _calibration_folds(TrainParams(encoder=None), texts, labels, langs)
    assert len(folds) == 10
    assert sorted(i for _, te in folds for i in te.tolist()) == list(range(len(texts)))
    for train, _ in folds:
        assert len(train) >= 0.85 * len(texts)


def test_the_centroid_vote_gets_the_share_the_held_out_rows_support() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, 400)
    informative = np.eye(5)[gold] * 3.0 + rng.normal(0, 0.5, (400, 5))
    noise = rng.normal(0, 1.0, (400, 5))
    # the vote knows the answer and the linear model does not: the largest share tried
    assert _fit_centroid_weight((noise, informative), 1.0, 1.0, gold) == max(CENTROID_WEIGHTS)
    # the other way round: no share at all
    assert _fit_centroid_weight((informative, noise), 1.0, 1.0, gold) == 0.0
