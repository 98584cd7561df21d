"""Stage: the `local` FD extractor, a small classifier trained on the dataset's own train split (CPU profiles).

Its test accuracy is recorded in the manifest (Fashion-MNIST: >= 90%), so readers can judge the feature space the
`fd_local` / `is_local` numbers live in. Output: `classifier.pt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig, TrainConfig
from digit_bench.data import load_split
from digit_bench.loaders import device_info

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


@dataclass(frozen=True)
class Cfg:
    data: DataConfig  # the whole train part (num_train / num_test unset)
    train: TrainConfig  # eval.local_train
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.classifier import evaluate_accuracy, load_classifier, train_classifier

    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    stats = train_classifier(train.images, train.labels, cfg.train, out, seed=cfg.seed,
                             num_classes=train.num_classes)  # batches decoded as drawn: no split held in memory
    acc = evaluate_accuracy(load_classifier(out / "classifier.pt"), test.images, test.labels)
    return {**stats, "test_accuracy": acc, "num_classes": train.num_classes, **device_info()}
