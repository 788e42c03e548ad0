"""All device, dtype and thread decisions, in one place.

Stages call these helpers instead of deciding on their own, so ``device="auto"``
means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from crossscale.errors import DeviceError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate_device(device: str) -> str:
    """Check the syntax of a device string: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise DeviceError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return device


def resolve_torch_device(device: str) -> torch.device:
    """Turn a device string into a ``torch.device``; ``auto`` picks CUDA, then MPS, then CPU.

    Raises:
        DeviceError: for a malformed string or hardware that is not present.
    """
    import torch

    validate_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device={device!r} but torch sees no CUDA GPU; use device='cpu' or 'auto'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device='mps' but MPS is not available; use device='cpu' or 'auto'")
    return torch.device(device)


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX: Xeon Sapphire Rapids and later).

    There bf16 inference is much faster than fp32 (EfficientNet-Lite0 crops 1.85x on 2 cores, docs/benchmarks.md);
    elsewhere bf16 is emulated or only partly accelerated, and not measured here. Asked of torch (a private check
    it has had since 2.1); if torch cannot say, the answer is no.
    """
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # noqa: BLE001 - a private API: any failure means "not known to be there"
        return False


def model_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype a model runs in: ``precision`` ``"fp32"``, ``"fp16"`` or ``"bf16"``, or for ``"auto"`` fp16 on
    CUDA, bf16 on a CPU with bf16 matrix units (:func:`cpu_has_bf16_matrix_units`), fp32 elsewhere."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_bf16_matrix_units():
            return torch.bfloat16
        return torch.float32
    if precision not in table:
        raise DeviceError(f"precision must be 'auto', 'fp32', 'fp16' or 'bf16', got {precision!r}")
    return table[precision]


def faiss_gpu_count() -> int:
    """Number of GPUs the installed faiss build can use (0 for faiss-cpu)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(get())
    except Exception:  # pragma: no cover - broken CUDA runtime
        logger.debug("faiss.get_num_gpus() failed", exc_info=True)
        return 0


#: the distributions that install a GPU build of the ``faiss`` module (faiss-cpu installs a CPU one under the same
#: name, so with both installed the one installed last is imported)
FAISS_GPU_DISTRIBUTIONS = (
    "faiss-gpu",
    "faiss-gpu-cu12",
    "faiss-gpu-cu11",
    "faiss-gpu-cuvs",
    "faiss-cuda",
    "faiss-cuda-cu128",
)


@functools.cache  # asked at each ChunkIndex(device="auto") without a GPU; the imported faiss is the process's
def faiss_gpu_distributions() -> Mapping[str, str]:
    """The installed distributions of :data:`FAISS_GPU_DISTRIBUTIONS`, with their versions (read-only)."""
    from importlib import metadata

    found = {}
    for name in FAISS_GPU_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return MappingProxyType(found)


def faiss_without_gpu() -> str:
    """Why the imported faiss serves no GPU, and what to do: the GPU build sees no GPU, a GPU build is installed
    but faiss-cpu's files are the ones imported, or no GPU build is installed."""
    import faiss

    if hasattr(faiss, "StandardGpuResources"):
        return "the installed faiss is a GPU build but sees no GPU (is the NVIDIA driver working? see nvidia-smi)"
    installed = faiss_gpu_distributions()
    if installed:
        name, version = next(iter(installed.items()))
        return (
            f"{name} {version} is installed, but the faiss imported is a CPU build: faiss-cpu installs the same "
            f"`faiss` module, and its files were installed last; reinstall the GPU build over them with "
            f"`pip install --force-reinstall --no-deps {name}=={version}`"
        )
    return (
        "the installed faiss is a CPU build; install a GPU build for your CUDA version: "
        "`pip install 'crossscale[gpu]'` (faiss-gpu, CUDA 12) or `pip install faiss-cuda` (CUDA 13)"
    )


def resolve_faiss_device(device: str) -> str:
    """``cpu`` or ``cuda:N`` for faiss; ``auto`` picks the GPU when the faiss build has one (and logs a warning when
    a GPU build is installed but not the one imported).

    Raises:
        DeviceError: if a GPU is asked for and the faiss build or machine has none, saying why
            (:func:`faiss_without_gpu`).
    """
    validate_device(device)
    n = faiss_gpu_count()
    if device == "auto":
        if n == 0 and faiss_gpu_distributions():
            _warn_once(f"the chunk index searches on the CPU: {faiss_without_gpu()}")
        return "cuda:0" if n > 0 else "cpu"
    if device in ("cpu", "mps"):
        return "cpu"
    index = int(device.split(":")[1]) if ":" in device else 0
    if n == 0:
        raise DeviceError(
            f"device={device!r} for the chunk index, but faiss serves no GPU: {faiss_without_gpu()}; "
            "or use device='cpu'"
        )
    if index >= n:
        raise DeviceError(f"device={device!r} but faiss sees only {n} GPU(s)")
    return f"cuda:{index}"


def default_threads() -> int:
    """The thread count torch should use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def preserved_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block.

    ultralytics drops torch to one thread on its first predict; without this,
    every other model in the process (the encoder) would run at a fraction of
    its speed afterwards.
    """
    import torch

    before = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time in this process."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)
