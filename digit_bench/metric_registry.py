"""The one list of metric families: name, direction, how it is measured, a good value, and a human axis label.

Everything that needs to know a metric reads it from here: the report's ↑/↓ and bold rules, figure axis labels,
`digit-bench ls metrics`, and the glossary in docs/metrics.md (`python -m digit_bench.metric_registry > docs/metrics.md`,
kept equal to this file by a test). A column belongs to the longest family it equals or extends with "_" or "."
("fd_local" -> "fd", "token_change_snr20" -> "token_change", "cost.total.wall_s" -> "cost").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Metric:
    """One metric family.

    Attributes:
        name: the column name or prefix ("fd" covers fd_local, fd_dinov2, ...).
        higher_is_better: True ↑, False ↓, None for sizes and choices.
        label: axis label with unit, without the arrow ("Fréchet distance").
        protocol: how it is measured here, in one sentence.
        good: what a good value looks like here, in words.
    """

    name: str
    higher_is_better: Optional[bool]
    label: str
    protocol: str
    good: str


METRICS: tuple[Metric, ...] = (
    Metric("fid", False, "FID (Inception)", "torch-fidelity inception-v3-compat features of the samples vs the "
           "reference set (`eval.reference`), Fréchet distance of the two Gaussians.",
           "ImageNet 256: < 10 is strong (paper: 4.59); real val data scores ~1.7–1.9."),
    Metric("fd", False, "Fréchet distance", "`fd_<extractor>`: the same Fréchet distance in another extractor's "
           "feature space (`local`: a small classifier trained on the data set's own train split; `dinov2`).",
           "as close to the real-data ceiling row as possible; the ceiling is the floor for every generator."),
    Metric("is", True, "Inception score", "`is_<extractor>`: exp(E KL(p(y|x) ‖ p(y))) over 10 splits of the samples.",
           "up to the number of classes (10 for Fashion-MNIST); real data is the reference."),
    Metric("kid", False, "kernel inception distance", "`kid_<extractor>`: unbiased polynomial-kernel MMD², subsets of "
           "`eval.kid_subset_size`.", "≈ 0 for samples indistinguishable from the reference."),
    Metric("precision", True, "precision", "improved precision (Kynkäänniemi et al.): fraction of samples inside the "
           "k-NN balls of real features (k = `eval.prc_neighborhood`).", "high together with recall; 1 with recall 0 "
           "is mode collapse."),
    Metric("recall", True, "recall", "improved recall: fraction of real features inside the samples' k-NN balls.",
           "high together with precision."),
    Metric("class_acc", True, "class accuracy (%)", "the local classifier's accuracy on class-conditional samples "
           "against the class they were sampled for.", "close to the classifier's accuracy on real test images."),
    Metric("probe_top1", True, "linear-probe top-1 (%)", "linear classifier on the frozen stage-1 GPT's features "
           "mean-pooled over every position, the layer chosen on held-out train images, top-1 on the test split. "
           "`probe_protocol` says which: converged (tiny/smoke: logistic regression solved to convergence, L2 chosen on "
           "held-out train) or paper (the released SGD probe on random-resized-crop views, 224/256 centre crop at test).",
           "paper (ImageNet): 71.7–80.3."),
    Metric("probe_top5", True, "linear-probe top-5 (%)", "as probe_top1, top-5.", "near 100 on 10 classes."),
    Metric("probe_layer", None, "probe layer", "the GPT layer the probe chose (a choice, not a score).", "—"),
    Metric("acc_ol", True, "encoder linear-probe top-1 (%)", "Acc@OL: linear probe on the tokenizer's own features "
           "(the frozen backbone's block output that K-Means clusters), mean-pooled over patches; no GPT.",
           "higher: an encoder whose features keep class information (paper Fig. 4a: DINOv2 > MAE)."),
    Metric("knn_ol", True, "encoder kNN top-1 (%)", "kNN@OL: DINO's weighted kNN (k = 20, T = 0.07, cosine) on the "
           "same mean-pooled features, at most 10,000 train images as the bank, top-1 on the test split; no fitted "
           "parameters.", "higher: a stronger encoder; mean pooling keeps what is in the image, not where, so raw pixel "
           "patches score low."),
    Metric("codebook_usage", True, "codebook usage (fraction)", "fraction of the K codes used on the test split.",
           "1.0: no dead codes."),
    Metric("codebook_perplexity", True, "codebook perplexity", "exp(entropy) of the code histogram on the test split.",
           "close to K: codes used evenly."),
    Metric("dead_codes", False, "dead codes", "codes of the codebook never assigned on the training features.", "0."),
    Metric("kmeans_seed_ari", True, "K-Means seed agreement (ARI)", "adjusted Rand index of the token maps of two "
           "K-Means seeds on the same images.", "1: the tokenizer does not depend on its seed."),
    Metric("token_change", False, "token change (fraction)", "`token_change_snr<X>`: fraction of token positions that "
           "change when Gaussian pixel noise at X dB SNR is added (docs/paper.md §6).",
           "paper Table 1 at 20 dB: 0.260 discriminative, 0.487 VQ tokens."),
    Metric("cos_sim", True, "feature cosine similarity", "`cos_sim_snr<X>`: mean cosine similarity of the "
           "pre-quantisation features of clean and noisy images.", "paper Table 1 at 20 dB: 0.940 / 0.910."),
    Metric("params", None, "parameters", "trainable parameters of the stage-1 generator.", "—"),
    Metric("flops", None, "training FLOPs", "the stage-1 GPT's FLOPs per token times the tokens it trained on.", "—"),
    Metric("cost", False, "cost", "`cost.<stage>.<wall_s|peak_mem_mb|device_hours>`: measured per stage, "
           "`cost.total.*` summed over the run's stages.", "lower, at equal quality."),
)
BY_NAME = {m.name: m for m in METRICS}


def family(column: str, names=BY_NAME) -> Optional[str]:
    """The longest family that `column` equals or extends with '_' or '.', or None."""
    hits = [f for f in names if column == f or column.startswith((f + "_", f + "."))]
    return max(hits, key=len, default=None)


def metric(column: str) -> Optional[Metric]:
    """The Metric of a column, or None."""
    name = family(column)
    return BY_NAME[name] if name else None


def glossary_markdown() -> str:
    """docs/metrics.md: one table row per family."""
    arrow = {True: "↑ higher", False: "↓ lower", None: "—"}
    lines = ["# Metric glossary", "",
             "Generated from `digit_bench/metric_registry.py` (`python -m digit_bench.metric_registry`). A column "
             "belongs to the longest family it equals or extends (`fd_local` → `fd`, `token_change_snr20` → "
             "`token_change`). Tables mark the direction with ↑/↓.", "",
             "| metric | better | protocol | a good value |", "|---|---|---|---|"]
    lines += [f"| `{m.name}` | {arrow[m.higher_is_better]} | {m.protocol} | {m.good} |" for m in METRICS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(glossary_markdown(), end="")
