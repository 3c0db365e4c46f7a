"""Intent model: training, artifact, version checks, CLI train/eval/predict on small data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import FeatureUnion

from pipeline.classify.features import with_fast_features
from pipeline.classify.model import (
    META_FILE,
    OUT_OF_SCOPE,
    UNKNOWN,
    IntentModel,
    TrainParams,
    _features,
    default_model,
    evaluate,
    stem_tokens,
)
from pipeline.cli import main
from pipeline.config import Settings, get_settings
from pipeline.domain.tfidf import FastUnion
from pipeline.errors import ModelError

# A tiny bilingual data set: 4 intents × (6 en + 6 ru).
TINY: dict[str, list[str]] = {
    "track_order": [
        "where is my order", "track my parcel please", "my package has not arrived",
        "what is the status of my order", "when will my order arrive", "order tracking",
        "где мой заказ", "отследить посылку", "посылка не пришла", "статус заказа",
        "когда придет мой заказ", "отслеживание заказа",
    ],
    "get_refund": [
        "i want my money back", "refund my purchase", "how do i get a refund",
        "give me a refund", "return the money please", "i need a refund for the order",
        "верните деньги", "хочу вернуть деньги", "оформите возврат денег",
        "как получить возврат", "верните оплату", "нужен возврат средств",
    ],
    "recover_password": [
        "i forgot my password", "reset my password", "can't log in, lost password",
        "password recovery", "how to change forgotten password", "recover my password",
        "забыл пароль", "сбросить пароль", "не могу войти, забыл пароль",
        "восстановить пароль", "как поменять забытый пароль", "восстановление пароля",
    ],
    "loyalty_points": [
        "my bonus points were not added", "loyalty card points missing", "no points for purchase",
        "bonus was not deducted", "check my loyalty balance", "reward points disappeared",
        "не начислили бонусы", "не списались баллы", "бонусы не пришли",
        "баланс бонусной карты", "пропали баллы", "карта лояльности не работает",
    ],
}  # fmt: skip
CATEGORY = {
    "track_order": "ORDER",
    "get_refund": "REFUND",
    "recover_password": "ACCOUNT",
    "loyalty_points": "LOYALTY",
}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _rows() -> list[dict[str, str]]:
    return [
        {"text": t, "label": label, "dept": CATEGORY[label]}
        for label, texts in TINY.items()
        for t in texts
    ]


@pytest.fixture(scope="module")
def tiny_model() -> IntentModel:
    rows = _rows()
    return IntentModel.train(
        [r["text"] for r in rows],
        [r["label"] for r in rows],
        categories=CATEGORY,
        params=TrainParams(holdout=0.0),
    )


def test_tiny_model_predicts_ru_and_en(tiny_model: IntentModel) -> None:
    preds = tiny_model.predict_batch(["where is my parcel", "верните мне деньги"])
    assert [p.best for p in preds] == ["track_order", "get_refund"]
    assert preds[1].best_category == "REFUND"
    assert all(0.0 <= p.confidence <= 1.0 for p in preds)


def test_abstained_prediction_is_unknown_and_never_an_untrained_label(
    tiny_model: IntentModel,
) -> None:
    preds = tiny_model.predict_batch(["", "zzzz qqqq", "where is my order"])
    for p in preds:
        assert p.label in {*TINY, UNKNOWN}
        assert (p.label == UNKNOWN) == p.abstained
        assert (p.category == UNKNOWN) == p.abstained
    assert preds[0].abstained


def test_training_is_deterministic_and_versioned() -> None:
    rows = _rows()
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    a = IntentModel.train(texts, labels, params=TrainParams(holdout=0.25))
    b = IntentModel.train(texts, labels, params=TrainParams(holdout=0.25))
    c = IntentModel.train(texts[:-1], labels[:-1], params=TrainParams(holdout=0.25))
    assert a.version == b.version != c.version
    assert a.meta.held_out is not None and a.meta.held_out.rows > 0
    assert a.meta.categories["track_order"] == "track_order"  # no category column


def test_training_rejects_bad_input() -> None:
    with pytest.raises(ModelError, match="reserved"):
        IntentModel.train(["a", "b", "c"], ["x", "unknown", "x"])
    with pytest.raises(ModelError, match="2 distinct"):
        IntentModel.train(["a", "b"], ["x", "x"])


def test_artifact_round_trip_and_version_mismatch(tiny_model: IntentModel, tmp_path: Path) -> None:
    out = tiny_model.save(tmp_path / "m")
    loaded = IntentModel.load(out)
    assert loaded.version == tiny_model.version
    texts = ["где мой заказ", "reset my password"]
    assert [p.best for p in loaded.predict_batch(texts)] == [
        p.best for p in tiny_model.predict_batch(texts)
    ]
    meta = json.loads((out / META_FILE).read_text())
    assert {"version", "data_sha256", "labels", "threshold", "libraries", "trained_at"} <= set(meta)
    meta["libraries"]["sklearn"] = "0.1.0"
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"sklearn 0\.1\.0.*retrain"):
        IntentModel.load(out)
    with pytest.raises(ModelError, match="missing"):
        IntentModel.load(tmp_path / "nowhere")


def test_evaluate_reports_confusions(tiny_model: IntentModel) -> None:
    report = evaluate(
        tiny_model, ["where is my order", "забыл пароль", "верните деньги"],
        ["track_order", "recover_password", "track_order"],
    )  # fmt: skip
    assert report.rows == 3
    assert report.accuracy == pytest.approx(2 / 3, abs=1e-3)
    assert ("track_order", "get_refund", 1) in [tuple(c) for c in report.confused]


def test_cli_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_csv(tmp_path / "train.csv", _rows())
    model_dir = tmp_path / "model"
    rc = main(
        ["model", "train", "--data", str(data), "--out", str(model_dir),
         "--text-col", "text", "--label-col", "label", "--category-col", "dept"]
    )  # fmt: skip
    assert rc == 0
    assert "4 labels" in capsys.readouterr().out
    assert IntentModel.load(model_dir).category("loyalty_points") == "LOYALTY"

    test_rows = [
        {"text": "where is my order", "label": "track_order"},
        {"text": "не начислили бонусы за покупку", "label": "loyalty_points"},
    ]
    test_csv = _write_csv(tmp_path / "test.csv", test_rows)
    assert (
        main(["model", "eval", "--model", str(model_dir), "--data", str(test_csv), "--json"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "per_label", "confused", "abstention_rate"} <= set(metrics)
    assert main(["model", "eval", "--model", str(model_dir), "--data", str(test_csv)]) == 0
    assert "macro-F1" in capsys.readouterr().out

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"body": r["text"]}, ensure_ascii=False) for r in test_rows) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "pred.jsonl"
    rc = main(["model", "predict", "--model", str(model_dir), "--data", str(jsonl),
               "--text-col", "body", "--out", str(out)])  # fmt: skip
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert set(line) == {"text", "label", "category", "confidence", "abstained", "top"}
        # the best guess stays even when abstained; top: best first, with confidences
        assert line["label"] in TINY
        assert line["top"][0] == {"label": line["label"], "confidence": line["confidence"]}
        confs = [t["confidence"] for t in line["top"]]
        assert len(line["top"]) == 3 and confs == sorted(confs, reverse=True)
    assert lines[1]["text"] == "не начислили бонусы за покупку"


def test_cli_reports_missing_column(tmp_path: Path) -> None:
    data = _write_csv(tmp_path / "train.csv", _rows())
    rc = main(["model", "train", "--data", str(data), "--out", str(tmp_path / "m"),
               "--label-col", "intent"])  # fmt: skip
    assert rc == 1


# ---------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> IntentModel:
    # the session's base temp dir is shared by every module: the model is trained once
    return default_model(Settings(data_dir=tmp_path_factory.getbasetemp() / "classify-cache"))


def test_default_model_has_bitext_and_retail_categories(default: IntentModel) -> None:
    cats = set(default.meta.categories.values())
    assert {"ORDER", "REFUNDS", "ACCOUNT", "STORE_QUALITY", "LOYALTY"} <= cats
    assert len([label for label in default.labels if label != OUT_OF_SCOPE]) == 29
    assert default.meta.held_out is not None and default.meta.held_out.accuracy > 0.95


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I want to cancel my order", "cancel_order"),
        ("how do I reset my password?", "recover_password"),
        ("Где мой заказ? Уже неделю жду", "track_order"),
        ("Хочу вернуть деньги за сломанный чайник", "get_refund"),
        ("Купила просроченный творог в вашем магазине", "product_quality"),
        ("Мне не начислили баллы на карту лояльности", "loyalty_points"),
        ("My loyalty points were not added after shopping", "loyalty_points"),
    ],
)
def test_default_model_reads_ru_and_en(default: IntentModel, text: str, label: str) -> None:
    (p,) = default.predict_batch([text])
    assert p.label == label, p


@pytest.mark.parametrize(
    "text",
    [
        "What's the weather like in Paris tomorrow?",
        "Какая погода завтра в Париже?",
        "Включи музыку погромче",
        "Hello",
        "Добрый день.",
        "asdf qwer zxcv",
    ],
)
def test_default_model_abstains_on_off_topic(default: IntentModel, text: str) -> None:
    (p,) = default.predict_batch([text])
    assert p.abstained and p.label == UNKNOWN, p


def test_default_model_cache_is_reused(
    default: IntentModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again = default_model(Settings(data_dir=tmp_path_factory.getbasetemp() / "classify-cache"))
    assert again.version == default.version
    assert again.meta.trained_at == default.meta.trained_at  # loaded, not retrained


def test_cli_train_without_data_retrains_the_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert main(["model", "train"]) == 0
    finally:
        get_settings.cache_clear()
    assert "held-out" in capsys.readouterr().out
    (cached,) = (tmp_path / "data" / "models").iterdir()
    assert IntentModel.load(cached).meta.held_out is not None


def test_word_features_are_stems_of_both_languages() -> None:
    assert stem_tokens("заказы заказов заказами orders ordered в") == [
        "заказ", "заказ", "заказ", "order", "order", "в",
    ]  # fmt: skip
    word = _features(TrainParams()).transformer_list[0][1]
    word.fit(["Где мои заказы?", "Мой заказ не пришёл", "Track my orders"])
    vocab = word.vocabulary_
    # every inflected form is one term, so a form never seen in training still counts
    assert {"заказ", "order", "не пришел"} <= set(vocab)
    seen, unseen = word.transform(["мои заказы"]), word.transform(["моими заказами"])
    assert seen[0, vocab["заказ"]] > 0 and unseen[0, vocab["заказ"]] > 0


def test_the_fast_model_decides_as_the_model() -> None:
    """with_fast_features (pipeline/domain/tfidf.py's features) decides as the model."""
    rows = _rows()
    model = IntentModel.train(
        [r["text"] for r in rows],
        [r["label"] for r in rows],
        categories=CATEGORY,
        params=TrainParams(holdout=0.0),
    )
    fast = with_fast_features(model)
    texts = ["", " ", "a", "😀 🙂x", "x" * 3000, "a\u00a0b\u2003c", "where is my parcel"]
    texts += ["верните мне деньги", "забыл пароль, где заказ"]
    np.testing.assert_array_equal(fast.confidences(texts), model.confidences(texts))
    assert fast.predict_batch(texts) == model.predict_batch(texts)
    segments = [[t] for t in texts] + [["where is my order", "и верните деньги"], []]
    assert fast.predict_segmented(segments) == model.predict_segmented(segments)
    # the model itself keeps sklearn's union (it is what model.save writes)
    assert isinstance(model._estimator.named_steps["features"], FeatureUnion)
    assert isinstance(fast._estimator.named_steps["features"], FastUnion)
    assert with_fast_features(fast) is fast
