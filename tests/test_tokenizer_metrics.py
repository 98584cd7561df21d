"""kNN@OL (stages/tokenizer_metrics.knn_top1): DINO's weighted kNN, chunked over test rows, on a bounded train bank."""

import numpy as np

from digit_bench.ssl import knn_accuracy
from digit_bench.stages import tokenizer_metrics
from digit_bench.stages.tokenizer_metrics import knn_top1


def blobs(n: int, seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    centres = np.random.default_rng(99).normal(size=(5, 16))
    return (centres[labels] + spread * rng.normal(size=(n, 16))).astype(np.float16), labels


def test_chunks_change_nothing_and_the_result_is_a_percentage(monkeypatch):
    train, ytrain = blobs(600, 0, 1.5)
    test, ytest = blobs(250, 1, 1.5)
    whole = 100 * knn_accuracy(train.astype(np.float32), ytrain, test.astype(np.float32), ytest, k=20)
    monkeypatch.setattr(tokenizer_metrics, "KNN_CHUNK", 7)  # 250 rows in chunks of 7: the last one short
    assert knn_top1(train, ytrain, test, ytest) == whole
    assert 20 < whole < 100  # overlapping blobs: neither chance nor perfect, so the equality above means something


def test_bank_is_bounded_and_separable_data_scores_100(monkeypatch):
    train, ytrain = blobs(600, 0, 0.05)
    test, ytest = blobs(100, 1, 0.05)
    monkeypatch.setattr(tokenizer_metrics, "KNN_BANK", 50)
    assert knn_top1(train, ytrain, test, ytest) == 100.0
    monkeypatch.setattr(tokenizer_metrics, "KNN_BANK", 1)  # one train row: every test row gets its label
    assert knn_top1(train, ytrain, test, ytest) < 50
