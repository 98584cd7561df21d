"""FD / IS / KID / precision-recall of generated images through torch-fidelity, with a bias-aware interval on FD.

torch-fidelity 0.4.0 is the only metric backend (DiGIT's `eval_fid.py` calls its `calculate_metrics` with the
inception-v3-compat extractor). We call the pieces `calculate_metrics` is made of, so that the reference features
are extracted once (the lead stores them as an artifact with `save_reference`) and a bootstrap over the feature
sets only re-runs the cheap statistics step:

    create_feature_extractor -> get_featuresdict_from_dataset        (uint8 tensors from memory, no PNG round trip)
    isc_featuresdict_to_metric | fid_features_to_statistics + fid_statistics_to_metric
    kid_featuresdict_to_metric | prc_featuresdict_to_metric

tests/test_fidelity.py checks that the numbers equal a direct `torch_fidelity.calculate_metrics` call.

Extractors (registry.EXTRACTORS points at the three builders below):
    inception  torch-fidelity 'inception-v3-compat': pool '2048' + 'logits_unbiased'; columns fid, is, kid, ...
    dinov2     torch-fidelity 'dinov2-vit-l-14': CLS 'dinov2' (1024-d), no logits so no IS; fd_dinov2, ...
    local      models/classifier.py, registered here as 'digit-bench-local': 'feat' + 'logits_unbiased'; fd_local, ...
Nothing downloads: a missing weight file is a UserError naming the file, where it was looked for and how to get it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric, KEY_METRIC_FID
from torch_fidelity.metric_isc import isc_featuresdict_to_metric, KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD
from torch_fidelity.metric_kid import kid_featuresdict_to_metric, KEY_METRIC_KID_MEAN
from torch_fidelity.metric_prc import prc_featuresdict_to_metric, KEY_METRIC_PRECISION, KEY_METRIC_RECALL
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from digit_bench.errors import UserError
from digit_bench.training import seeded_init
from digit_bench.models.classifier import Classifier, evaluate_accuracy, load_classifier
from digit_bench.weights import load_weights, tensor_buffer

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
LOCAL_NAME = "digit-bench-local"  # our classifier's name in torch-fidelity's extractor registry


# ------------------------------------------------------------------------------------------ the local extractor
class LocalFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity view of models/classifier.py: 'feat' (B, 8w) for FD/KID/PRC, 'logits_unbiased' (B, C) for IS.

    `feature_extractor_weights_path` is the file written by `train_classifier` / `save_classifier`. Images of
    another size than the classifier was trained at are resized to it (bilinear, antialiased).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise UserError("the local extractor needs its classifier file: pass the classifier.pt of train_classifier")
        self.model = load_classifier(Path(feature_extractor_weights_path))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = self.model.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.float(), (size, size), mode="bilinear", antialias=True)  # (B, 3, S, S), 0..255
        feat, logits = self.model(x)  # (B, 8w), (B, C)
        out = {"feat": feat, "logits_unbiased": logits}
        return tuple(out[a] for a in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "feat", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits_unbiased" if metric == "isc" else "feat"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if LOCAL_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity refuses a second registration of a name
    torch_fidelity.register_feature_extractor(LOCAL_NAME, LocalFeatureExtractor)


# ------------------------------------------------------------------------------------------------ extractors
@dataclass(frozen=True)
class Extractor:
    """One FD feature extractor, resolved to a weight file; what `compute_metrics` and the protocol string need."""

    name: str  # ours: inception | dinov2 | local
    fidelity_name: str  # its name in torch-fidelity's registry
    weights: str  # the weight file
    weights_sha256: str  # first 12 hex digits of the file's sha256
    feature_layer: str  # torch-fidelity layer for FD/KID/PRC
    logits_layer: str | None  # layer for IS; None = no class logits, no IS
    pass_weights: bool  # hand `weights` to torch-fidelity (False: it finds them in the torch.hub cache itself)

    @property
    def suffix(self) -> str:
        """Metric-name suffix: none for the standard Inception metrics, `_<name>` otherwise."""
        return "" if self.name == "inception" else f"_{self.name}"

    def column(self, metric: str) -> str:
        """Result column of `metric` (fd, is, kid, precision, recall, protocol): fid, fd_local, is_dinov2, ..."""
        return "fid" if (metric, self.name) == ("fd", "inception") else metric + self.suffix


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def file_sha256(path: Path) -> str:
    """First 12 hex digits of the file's sha256 (cached per path, size and mtime)."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def _hub_checkpoint(filename: str, url: str, what: str) -> Path:
    """`filename` in torch.hub's checkpoint cache ($TORCH_HOME/hub/checkpoints), or a UserError saying how to get it."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise UserError(f"{what} weights {filename} not found in {path.parent} (torch.hub cache, "
                        f"$TORCH_HOME/hub/checkpoints) and eval.weights is unset; download {url} on a machine with "
                        f"network and copy it there, or set eval.weights=<file>")
    return path


def _explicit_file(weights: str, what: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"{what} weight file {path} does not exist; fix the path")
    return path


@functools.lru_cache(maxsize=4)
def _checked_weights(path: str, size: int, mtime_ns: int, what: str) -> Any:
    """load_weights of a file, once per (path, size, mtime)."""
    return load_weights(path, what)


def inception_extractor(weights: str | None = None) -> Extractor:
    """torch-fidelity's TF-compatible InceptionV3 (the standard FID/IS), from `weights` or the torch.hub cache."""
    what = "Inception-v3 (torch-fidelity)"
    path = _explicit_file(weights, what) if weights else _hub_checkpoint(INCEPTION_FILE, URL_INCEPTION_V3, what)
    st = path.stat()
    _checked_weights(str(path), st.st_size, st.st_mtime_ns, what)  # tensors only: a pickled payload is refused here
    return Extractor("inception", "inception-v3-compat", str(path), file_sha256(path), "2048", "logits_unbiased", True)


def random_inception_extractor(path: Path, seed: int = 0) -> Extractor:
    """torch-fidelity's InceptionV3 architecture with seeded random init, written to `path` (offline device checks).

    BatchNorm statistics are calibrated on one batch of noise images so that the features do not collapse. Its FID
    is not the standard FID: only for comparing devices or timing, never for results.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _RandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the layers' own (seeded) init
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    with seeded_init(seed):
        model = _RandomInit("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        # BatchNorm statistics from one batch of noise images: without them the random features collapse to ~0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
        model.train()
        with torch.no_grad():
            model(torch.randint(0, 256, (8, 3, 299, 299), dtype=torch.uint8))  # (8, 3, 299, 299)
    torch.save(model.state_dict(), path)
    return Extractor("inception", "inception-v3-compat", str(path), file_sha256(path), "2048", "logits_unbiased", True)


def dinov2_extractor(weights: str | None = None) -> Extractor:
    """torch-fidelity's DINOv2 ViT-L/14 (FD_DINOv2, dgm-eval's recommended encoder), from the torch.hub cache.

    NOTE: torch-fidelity 0.4.0 builds it with `torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")` and raises
    NotImplementedError for an explicit weight file, so both the hub repo code and the checkpoint must be cached.
    """
    hub = Path(torch.hub.get_dir())
    if weights:
        raise UserError(f"torch-fidelity 0.4.0 loads DINOv2 only from the torch.hub cache; unset eval.weights and put "
                        f"{DINOV2_FILE} in {hub / 'checkpoints'} and the facebookresearch/dinov2 code in "
                        f"{hub / 'facebookresearch_dinov2_main'}")
    path = _hub_checkpoint(DINOV2_FILE, DINOV2_URL, "DINOv2 ViT-L/14")
    load_weights(path, "DINOv2 ViT-L/14 (torch.hub cache)", mmap=True)  # torch.hub unpickles it: only tensors pass
    if not any((hub / f"facebookresearch_dinov2_{ref}").is_dir() for ref in ("main", "master")):
        raise UserError(f"DINOv2 hub code not found in {hub / 'facebookresearch_dinov2_main'}; run "
                        f"`torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')` once with network "
                        f"(or copy that folder) with the same TORCH_HOME")
    return Extractor("dinov2", "dinov2-vit-l-14", str(path), file_sha256(path), "dinov2", None, False)


def local_extractor(weights: str | None = None) -> Extractor:
    """Our classifier (models/classifier.py) trained on the dataset; `weights` is its classifier.pt."""
    if not weights:
        raise UserError("the local extractor needs the classifier file written by train_classifier (classifier.pt)")
    path = _explicit_file(weights, "local classifier")
    return Extractor("local", LOCAL_NAME, str(path), file_sha256(path), "feat", "logits_unbiased", True)


# ------------------------------------------------------------------------------------------------ features
class UInt8Images(Dataset):
    """uint8 (N, H, W, 3) array (or memmap) -> uint8 (3, H, W) tensors, the input torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)  # (3, H, W)


def extract_features(images: np.ndarray, extractor: Extractor, batch_size: int = 64,
                     layers: list[str] | None = None, cuda: bool | None = None) -> dict[str, torch.Tensor]:
    """Features of uint8 (N, H, W, 3) images through torch-fidelity's own extraction loop.

    Args:
        layers: torch-fidelity layer names; None = the FD layer plus the logits layer (if any).
        cuda: run the extractor on the GPU; None = when one is available.

    Returns:
        {layer: float32 (N, D)} on the CPU.
    """
    layers = layers or [extractor.feature_layer] + ([extractor.logits_layer] if extractor.logits_layer else [])
    cuda = torch.cuda.is_available() if cuda is None else cuda
    weights = {}
    if extractor.pass_weights and extractor.fidelity_name == "inception-v3-compat":
        # torch-fidelity torch.load()s this with weights_only=False: hand it the checked tensors, not the file
        st = Path(extractor.weights).stat()
        state = _checked_weights(extractor.weights, st.st_size, st.st_mtime_ns, "Inception-v3 (torch-fidelity)")
        weights = {"feature_extractor_weights_path": tensor_buffer(state)}
    elif extractor.pass_weights:  # our local classifier: load_classifier reads it with weights_only=True
        weights = {"feature_extractor_weights_path": extractor.weights}
    module = create_feature_extractor(extractor.fidelity_name, list(layers), cuda=cuda, verbose=False, **weights)
    # save_cpu_ram: no DataLoader workers; the images are already in memory and workers only cost start-up time.
    return get_featuresdict_from_dataset(UInt8Images(images), module, batch_size, cuda, save_cpu_ram=True,
                                         verbose=True)  # a progress bar on stderr


# ------------------------------------------------------------------------------------------------ reference
@dataclass
class Reference:
    """Real-image side of FD/KID/PRC for one extractor: features (or only ADM-style mu/sigma) plus identity."""

    extractor: str  # Extractor.name the features come from
    weights_sha256: str | None  # of that extractor's weights; None = unknown (ADM npz, TF graph)
    features: torch.Tensor | None  # float32 (N, D) in the extractor's FD layer; None = mu/sigma only (FID only)
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    num_images: int
    image_size: int | None  # side of the real images; None = unknown (npz)


def reference_features(images: np.ndarray, extractor: Extractor, batch_size: int = 64) -> Reference:
    """Extract the reference set once; store it with `save_reference`."""
    feats = extract_features(images, extractor, batch_size, [extractor.feature_layer])[extractor.feature_layer]
    stats = fid_features_to_statistics(feats)
    return Reference(extractor.name, extractor.weights_sha256, feats, stats["mu"], stats["sigma"], len(feats),
                     int(images.shape[1]))


def save_reference(ref: Reference, path: Path) -> None:
    torch.save({"extractor": ref.extractor, "weights_sha256": ref.weights_sha256, "features": ref.features,
                "mu": torch.from_numpy(ref.mu), "sigma": torch.from_numpy(ref.sigma), "num_images": ref.num_images,
                "image_size": ref.image_size}, path)


def load_reference(path: str | Path) -> Reference:
    """A reference saved by `save_reference`, or `npz:<file>` with ADM-style `mu`/`sigma` (Inception pool features).

    An npz reference supports FID only: ADM's mu/sigma come from the whole ImageNet train set, its images are not here.
    An npz written by `digit-bench score --export-reference` also names its `extractor` and `weights_sha256`; a file
    without them is taken as Inception pool features of unknown weights (ADM's TF graph).
    """
    if str(path).startswith("npz:"):
        file = Path(str(path)[4:]).expanduser()
        if not file.is_file():
            raise UserError(f"reference npz {file} does not exist; fix eval.reference=npz:<file>")
        with np.load(file) as npz:
            if "mu" not in npz or "sigma" not in npz:
                raise UserError(f"reference npz {file} has no mu/sigma arrays (keys: {', '.join(npz.files)}); "
                                "use an ADM-style stats file")
            mu, sigma = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
            extractor = str(npz["extractor"]) if "extractor" in npz else "inception"
            weights = str(npz["weights_sha256"]) if "weights_sha256" in npz else None
        return Reference(extractor, weights, None, mu, sigma, 0, None)
    d = torch.load(path, map_location="cpu", weights_only=True)
    return Reference(d["extractor"], d["weights_sha256"], d["features"], d["mu"].numpy(), d["sigma"].numpy(),
                     d["num_images"], d["image_size"])


# ------------------------------------------------------------------------------------------------ metrics
def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """torch-fidelity's Frechet distance of two {mu, sigma}; float32/float64 mu mixes are cast to float64."""
    if stats_1["mu"].dtype != stats_2["mu"].dtype:
        stats_1, stats_2 = ({k: v.astype(np.float64) for k, v in s.items()} for s in (stats_1, stats_2))
    return fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID]


def _stats64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean (D,) and unbiased covariance (D, D) of float64 rows (N, D), as torch-fidelity computes them."""
    return x.mean(0), np.cov(x, rowvar=False)


def _fd64(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, root_2: np.ndarray, trace_2: float) -> float:
    """Frechet distance with sigma_2 given by its symmetric square root: tr sqrt(S1 S2) = sum sqrt(eig(R S1 R)).

    NOTE: the same quantity as `frechet_distance`; torch-fidelity's non-symmetric `eigvals` costs ~13 s at D=2048 on
    two cores, `eigvalsh` ~0.9 s; tests/test_fidelity.py checks the two agree.
    """
    diff = mu_1 - mu_2
    eig = np.linalg.eigvalsh(root_2 @ sigma_1 @ root_2)  # (D,)
    return float(diff @ diff + np.trace(sigma_1) + trace_2 - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # (D, D) symmetric square root


def bootstrap_fd(gen: torch.Tensor, ref: Reference, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """FD of `num` bootstrap resamples and of `num` resamples of those resamples (the double bootstrap).

    Replicate b resamples the generated features and, when the reference keeps its features, the reference ones
    too (both sets are finite samples; an npz reference is mu/sigma only and stays fixed). Its second-level
    replicate resamples replicate b's own rows once more. Seeded: the same inputs and seed give the same values.

    Returns:
        float64 (num,) first-level and (num,) second-level FD values.
    """
    rng = np.random.default_rng(seed)
    g = gen.double().numpy()  # (N, D)
    r = None if ref.features is None else ref.features.double().numpy()  # (M, D)
    fixed_root, fixed_trace = _sqrtm_psd(ref.sigma.astype(np.float64)), float(np.trace(ref.sigma))
    mu_ref = ref.mu.astype(np.float64)
    first, second = np.empty(num), np.empty(num)
    for b in range(num):
        gi = rng.integers(0, len(g), len(g))  # (N,)
        gj = gi[rng.integers(0, len(g), len(g))]  # (N,) a resample of the resample
        if r is None:
            first[b] = _fd64(*_stats64(g[gi]), mu_ref, fixed_root, fixed_trace)
            second[b] = _fd64(*_stats64(g[gj]), mu_ref, fixed_root, fixed_trace)
            continue
        ri = rng.integers(0, len(r), len(r))  # (M,)
        rj = ri[rng.integers(0, len(r), len(r))]  # (M,)
        for idx_g, idx_r, out in ((gi, ri, first), (gj, rj, second)):
            mu_r, sigma_r = _stats64(r[idx_r])
            out[b] = _fd64(*_stats64(g[idx_g]), mu_r, _sqrtm_psd(sigma_r), float(np.trace(sigma_r)))
    return first, second


def fd_interval(fd: float, first: np.ndarray, second: np.ndarray, level: float = 0.95,
                both_sets: bool = True) -> dict:
    """Bias-corrected FD and an interval for the true (population) FD from a double bootstrap.

    The FD estimator is biased upwards (the mean term by tr(S_g)/N + tr(S_r)/M, the tr sqrt(S_g S_r) term
    downwards by concavity), by several times the true value when N is near the feature dimension, and a
    percentile bootstrap adds that bias once more. Here:
    - point: the iterated (second-order) bootstrap bias correction
      fd_bc = 3 fd - 3 mean(first) + mean(second);
    - spread: the quantiles of the first-order corrected replicates 2 first_b - second_b around their mean,
      placed around fd_bc (a basic-bootstrap interval of the corrected estimator; the one inner resample per
      replicate adds noise, which widens it);
    - near 0 the correction is unreliable (FD >= 0 is a boundary; the lower end falls below 0): the interval is then
      the one-sided bound [0, the `level` quantile of the uncorrected replicates], valid because the estimator is
      biased upwards, and its text starts with "<=".
    tests/test_fidelity.py measures its coverage of the known FD of Gaussians at the tiny and smoke sample sizes.

    Returns:
        {"bc", "low", "high", "interval"}: the corrected FD, the ends, and the text saying what the interval is.
    """
    num = len(first)
    bc = 3 * fd - 3 * first.mean() + second.mean()
    corrected = 2 * first - second  # (num,)
    q_low, q_high = np.quantile(corrected - corrected.mean(), [(1 - level) / 2, (1 + level) / 2])
    low, high = bc - q_high, bc - q_low
    sets = "generated+reference" if both_sets else "generated (reference mu/sigma fixed)"
    what = f"{100 * level:g}% CI of the true FD: 2nd-order bias-corrected double bootstrap, {num}x2 resamples of {sets}"
    if low <= 0:
        bound = float(np.quantile(first, level))
        return {"bc": max(bc, 0.0), "low": 0.0, "high": bound,
                "interval": f"<= {bound:.3g} (one-sided {100 * level:g}% upper bound of the true FD: uncorrected "
                            f"bootstrap quantile, {num} resamples of {sets}; the bias correction fails near 0)"}
    return {"bc": float(bc), "low": float(low), "high": float(high), "interval": what}


def compute_metrics(gen_images: np.ndarray, ref: Reference, extractor: Extractor, *, isc: bool = True, fid: bool = True,
                    kid: bool = True, prc: bool = True, kid_subset_size: int = 1000, prc_neighborhood: int = 3,
                    bootstrap: int = 200, seed: int = 0, reference_id: str = "", batch_size: int = 64) -> dict:
    """Score generated uint8 (N, H, W, 3) images against a reference with one extractor.

    Args:
        ref: from `reference_features` / `load_reference`, made with the same extractor and weights.
        isc: IS on the extractor's logits (not available for dinov2, which has none).
        kid_subset_size: torch-fidelity KID subset size, clipped to both set sizes.
        bootstrap: double-bootstrap resamples of the generated (and reference) set for the FD interval (0 = none).
        seed: seed of the bootstrap resampling.
        reference_id: identity of the reference set (artifact id, or the npz file and its hash) for the protocol.

    Returns:
        Flat dict: fid | fd_<ext> (the standard, upward-biased estimate), with a bootstrap: its _bc (bias-corrected),
        _ci_low/_ci_high (95% interval of the true FD, see `fd_interval`) and _interval (what the interval is),
        is[_<ext>] and its _std,
        kid[_<ext>], precision[_<ext>], recall[_<ext>], num_samples, protocol[_<ext>]. Precision is the fraction
        of generated samples inside the real manifold (quality), recall the fraction of real ones inside the
        generated manifold (diversity).
    """
    if ref.extractor != extractor.name or (ref.weights_sha256 not in (None, extractor.weights_sha256)):
        raise UserError(f"reference was made with {ref.extractor} (weights {ref.weights_sha256}) but the extractor is "
                        f"{extractor.name} (weights {extractor.weights_sha256}); rebuild the reference with this "
                        f"extractor")
    if ref.features is None and (kid or prc):
        raise UserError("an npz reference holds only mu/sigma, which gives FID only; turn KID/PRC off or use a "
                        "dataset: reference")
    if isc and extractor.logits_layer is None:
        raise UserError(f"IS needs class logits and the {extractor.name} extractor has none; call with isc=False")
    layer = extractor.feature_layer
    layers = ([layer] if fid or kid or prc else []) + ([extractor.logits_layer] if isc else [])
    gen = extract_features(gen_images, extractor, batch_size, layers)
    n = len(gen_images)
    out: dict = {"num_samples": n}
    if isc:
        m = isc_featuresdict_to_metric(gen, extractor.logits_layer, verbose=False)
        out[extractor.column("is")] = m[KEY_METRIC_ISC_MEAN]
        out[extractor.column("is") + "_std"] = m[KEY_METRIC_ISC_STD]
    if fid:
        fd = extractor.column("fd")
        out[fd] = frechet_distance(fid_features_to_statistics(gen[layer]), {"mu": ref.mu, "sigma": ref.sigma})
        if bootstrap > 0:
            ci = fd_interval(out[fd], *bootstrap_fd(gen[layer], ref, bootstrap, seed), both_sets=ref.features is not None)
            out[fd + "_bc"], out[fd + "_ci_low"], out[fd + "_ci_high"] = ci["bc"], ci["low"], ci["high"]
            out[fd + "_interval"] = ci["interval"]
    real = {layer: ref.features}
    if kid:
        size = min(kid_subset_size, n, ref.num_images)
        m = kid_featuresdict_to_metric(gen, real, layer, kid_subset_size=size, verbose=False)
        out[extractor.column("kid")] = m[KEY_METRIC_KID_MEAN]
    if prc:
        # NOTE: generated first. PRC on torch-fidelity's main branch before the 0.4.0 wheel read input1 as REAL, which
        # swapped precision and recall for the usual input1=generated (toshas/torch-fidelity#58, PR #66); the 0.4.0
        # wheel reads input1 as GENERATED. tests/test_fidelity.py pins this reading with a mode-collapsed set.
        m = prc_featuresdict_to_metric(gen, real, layer, prc_neighborhood=prc_neighborhood, save_cpu_ram=True,
                                       verbose=False)
        out[extractor.column("precision")] = m[KEY_METRIC_PRECISION]
        out[extractor.column("recall")] = m[KEY_METRIC_RECALL]
    real_set = f"{ref.num_images} images" if ref.features is not None else "mu/sigma only"
    out[extractor.column("protocol")] = (
        f"torch-fidelity {torch_fidelity.__version__} {extractor.fidelity_name}[{layer}]"
        f" sha256:{extractor.weights_sha256}"
        f" | reference {reference_id or '?'} ({real_set})"
        f" | {n} samples {gen_images.shape[1]}x{gen_images.shape[2]} | torch {torch.__version__}")
    return out


def class_accuracy(images: np.ndarray, intended_labels: np.ndarray, classifier: Classifier) -> float:
    """Percent of class-conditional samples the local classifier assigns to the class they were generated for."""
    return 100.0 * evaluate_accuracy(classifier, images, intended_labels)


# Extractor -> the backbone-name prefix of the same model family (registry.BACKBONES names).
_SAME_FAMILY = {"dinov2": "dinov2"}


def circular(tokenizer_backbone: str, extractor: str) -> bool:
    """True when the FD extractor is of the tokenizer backbone's family (DINOv2 tokens judged by DINOv2).

    Such an FD rewards matching the very features the tokens were built from; report an independent extractor
    (inception, local) next to it. Inception is never circular here: no registered backbone is an Inception.
    """
    family = _SAME_FAMILY.get(extractor)
    return family is not None and tokenizer_backbone.startswith(family)
