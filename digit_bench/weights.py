"""The one loader for weight files a user or a library hands us: tensors only, never code.

`torch.load(weights_only=False)` unpickles arbitrary objects, so a crafted `.pt` runs its payload on load. Every
weight file the project reads (`backbone.weights`, `vqgan.weights`, `eval.weights`, the Inception and DINOv2 files in
the torch.hub cache) goes through `load_weights`: safetensors, or `torch.load(weights_only=True)` (tensors and plain
containers). Libraries that would unpickle a path themselves (torch-fidelity's Inception) get the checked tensors
re-serialized in memory (`tensor_buffer`) instead of the path; those that load through torch.hub (torch-fidelity's
DINOv2) get the file only after `load_weights` accepted it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from digit_bench.errors import UserError


def load_weights(path: str | Path, what: str, *, mmap: bool = False, fix: str = "download it again",
                 pickled: str = "use the original release file, or re-save only its state_dict (torch.save) or a "
                                ".safetensors copy") -> Any:
    """The tensors (state dict or nested containers of tensors) in `path`, or a UserError naming the file and why:
    missing, unreadable/truncated, or holding pickled objects that are not tensors (refused: they could run code).

    Args:
        what: the file's role in messages ("backbone.weights", "Inception-v3 (torch-fidelity)").
        mmap: map the file instead of reading it (large checkpoints that are only checked).
        fix: what to do about a truncated or unreadable file.
        pickled: what to do about a file that holds pickled objects other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: weight file {path} does not exist; fix the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{what}: {path} is not a readable safetensors file ({_first_line(e)}); {fix}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise UserError(f"{what}: {path} holds pickled objects other than tensors ({_first_line(e)}); refusing to load "
                        f"it, as unpickling could run code: {pickled}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, ImportError) as e:
        raise UserError(f"{what}: {path} is truncated or not a PyTorch weight file ({type(e).__name__}: "
                        f"{_first_line(e)}); {fix}") from None


def tensor_buffer(tensors: Any) -> io.BytesIO:
    """Checked tensors serialized in memory, for a library that insists on `torch.load`-ing a path itself."""
    buf = io.BytesIO()
    torch.save(tensors, buf)
    buf.seek(0)
    return buf


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
