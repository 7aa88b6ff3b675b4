import json

import numpy as np
import pytest

from pipeline.config import MonitoringConfig, load_model_config
from pipeline.data.dataset import Examples
from pipeline.errors import ConfigError, NotFound
from pipeline.monitoring.features import OTHER_TOKEN
from pipeline.monitoring.monitor import judge
from pipeline.monitoring.reference import build_reference, reference_from_examples
from pipeline.monitoring.window import LiveWindow
from pipeline.release.registry import VersionRecord
from pipeline.settings import get_paths

_HAM = ["meeting notes for the project review on monday", "please find the report attached for the team",
        "lunch with the team after the review", "the build is green again after the fix"]
_SPAM = ["cheap pills online buy now", "win a free prize click here now", "lowest mortgage rates apply today"]


def _emails(count: int, seed: int, words: list[str] | None = None) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        spam = int(rng.random() < 0.3)
        text = str(rng.choice(_SPAM if spam else _HAM))
        if words is not None:  # a new campaign: words the training data never saw
            text += " " + " ".join(rng.choice(words, 6))
        texts.append(text)
        labels.append(spam)
    return texts, labels


def _window(texts: list[str], labels: list[int]) -> LiveWindow:
    window = LiveWindow(None, 0.0, requests=len(texts), instances=list(texts), predicted=list(labels))
    window.labelled = list(zip(labels, labels, strict=True))
    return window


@pytest.fixture
def spam_reference():
    texts, labels = _emails(2000, seed=0)
    train = Examples("text", np.array(texts, dtype=object), np.array(labels), ("ham", "spam"))
    config = load_model_config("spam")
    return reference_from_examples("spam", 1, "cd" * 32, train, {"accuracy": 0.99}, config.monitoring), config


def test_e_mails_are_judged_on_length_unknown_words_and_tokens(spam_reference) -> None:
    reference, config = spam_reference
    assert set(reference.features) == {"length", "tokens", "oov_rate"} and OTHER_TOKEN in reference.token_shares
    assert reference.prediction_source == "the training labels" and reference.expected_accuracy == 0.99

    clean, _ = judge(reference, _window(*_emails(300, seed=1)), config)
    assert clean.judged and not clean.drifted, clean.reasons()
    campaign, _ = judge(reference, _window(*_emails(300, seed=2, words=["crypto", "wallet", "airdrop", "nft"])),
                        config)
    assert campaign.drifted
    reasons = " ".join(campaign.reasons())
    assert "oov_rate drifted" in reasons and "tokens drifted" in reasons


def test_the_reference_comes_from_the_versions_snapshot_and_its_test_predictions(tmp_path) -> None:
    paths = get_paths(tmp_path)
    snapshot = paths.data_dir / "mnist" / ("ef" * 32)
    snapshot.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(snapshot / "train.npz", x=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), y=np.arange(50) % 10)
    (snapshot / "manifest.json").write_text(json.dumps({"sha256": "ef" * 32, "kind": "image",
                                                        "class_names": [str(d) for d in range(10)]}))
    confusion = np.eye(10, dtype=int) * 5
    confusion[0, 1] = 5  # the version answered 1 for half of the zeros
    record = VersionRecord("mnist", 4, "promoted", None, data_sha256="ef" * 32,  # type: ignore[arg-type]
                           metrics={"accuracy": 0.9, "confusion_matrix": confusion.tolist()})
    reference = build_reference("mnist", record, paths, MonitoringConfig(reference_size=100))
    assert (reference.version, reference.size, reference.kind) == (4, 50, "image")
    assert reference.prediction_shares["1"] == pytest.approx(10 / 55)
    assert reference.prediction_source == "the version's test predictions"

    gone = VersionRecord("mnist", 5, "promoted", None, data_sha256="00" * 32)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no longer under"):
        build_reference("mnist", gone, paths, MonitoringConfig())


def test_the_monitoring_config_is_checked() -> None:
    config = load_model_config("mnist")
    assert config.monitoring.window_requests == 300 and config.monitoring.sustained_windows == 2
    with pytest.raises(ConfigError, match="min_requests .* must not exceed window_requests"):
        config.with_overrides({"monitoring.window_requests": 50, "monitoring.min_requests": 100})
    with pytest.raises(ConfigError, match="monitoring.alpha"):
        config.with_overrides({"monitoring.alpha": 0})
