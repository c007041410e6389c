"""The metric networks: LPIPS (AlexNet) distances and pytorch-fid's Inception features, from local weights.

- LPIPS: the ``lpips`` package, AlexNet trunk, version 0.1, inputs scaled to [-1, 1], whole image.
- FID/KID features: ``pytorch-fid`` 0.3.0, 2048-d pool3 features of its FID Inception (its own
  bilinear resize to 299, inputs in [0, 1]).

Pretrained weights are never downloaded here (``strdiffusion weights fetch`` / the workflow's
``weights`` rule fetches them once, hash-checked). They are looked up in the torch hub cache
(``$TORCH_HOME/hub/checkpoints/``) or at a path the user gives; when absent, the network is
unavailable with a reason that says where to put the file (the metrics stage then reports NaN).
The networks are built through the packages' own loading code (``torch.hub.load_state_dict_from_url``),
which uses a cached file as is. ``random_fid_inception`` builds the Inception layout with random
weights and ``write_standin_weights`` writes stand-in files of both networks, for tests and benchmarks only.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UserError
from strdiffusion.io.images import equal_size_runs
from strdiffusion.metrics.weights import (
    default_dir as hub_checkpoint_dir,  # torch.hub's folder, found without importing torch
)
from strdiffusion.runtime.gpu import resolve_device

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def random_fid_inception(init_weights: bool = False):
    """pytorch-fid's FID Inception layout (the 1008-class trunk with its FID blocks) with random
    weights: the module tree whose state dict ``pt_inception-2015-12-05-6726825d.pth`` fills.
    For tests (stand-in weight files) and throughput benchmarks only; never for reported numbers."""
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=init_weights)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net


def write_standin_weights(folder: Path) -> None:
    """Random-weight stand-ins for both metric networks under the real file names in ``folder`` (a hub
    ``checkpoints`` folder or a weights folder): Inception with its BatchNorm statistics calibrated on random
    inputs, so that its features are O(1) instead of vanishing, and torchvision's AlexNet. Seeded, so every
    call writes the same files. For tests and time or memory benchmarks only; never for reported numbers."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = random_fid_inception(init_weights=True)
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 128, 128) * 2 - 1)
    torch.save(net.state_dict(), folder / INCEPTION_FILE)
    torch.manual_seed(1)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / ALEXNET_FILE)


# ----------------------------------------------------------------------------- weights

def find_weights(filename: str, local_path=None, setting: str = "") -> tuple[Path | None, str]:
    """Locate a weights file without downloading: ``local_path`` if given, else the hub cache.

    Returns (path, "") when found, else (None, reason) with a reason that says where to put it.
    """
    hub = hub_checkpoint_dir()
    if local_path:
        path = Path(local_path).expanduser()
        if path.is_file():
            return path, ""
        return None, (f"{path} (given as {setting}) does not exist; put {filename} there, or into "
                      f"$TORCH_HOME/hub/checkpoints/ (currently {hub}) and unset {setting}")
    cached = hub / filename
    if cached.is_file():
        return cached, ""
    return None, (f"put {filename} into $TORCH_HOME/hub/checkpoints/ (currently {hub}) "
                  f"or set {setting}; online, `strdiffusion weights fetch` downloads it")


@contextlib.contextmanager
def _hub_serving(filename: str, path: Path):
    """Let torch.hub find ``path`` under ``filename`` so the packages' loaders use it offline.

    When ``path`` is not the hub cache's own file, a temporary hub folder holding a link to it is
    set for the duration; the previous setting (possibly "follow $TORCH_HOME") is restored.
    """
    import torch

    cached = hub_checkpoint_dir() / filename
    if cached.is_file() and cached.resolve() == Path(path).resolve():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="strdiffusion-hub-") as tmp:
        target = Path(tmp) / "checkpoints" / filename
        target.parent.mkdir()
        try:
            target.symlink_to(Path(path).resolve())
        except OSError:
            shutil.copyfile(path, target)
        previous = getattr(torch.hub, "_hub_dir", None)  # None means: follow $TORCH_HOME
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


@contextlib.contextmanager
def _loading(path: Path, what: str):
    try:
        yield
    except Exception as exc:  # a truncated download, a wrong file: say which file to replace
        raise UserError(f"{path}: cannot load the {what} weights from this file "
                        f"({exc.__class__.__name__}: {str(exc)[:200]}); delete or replace it") from None


def _batches(items_a, items_b, batch_size: int):
    """Yield index lists of at most ``batch_size`` consecutive items that share one shape."""
    for idx in equal_size_runs([np.shape(a) for a in items_a], batch_size):
        shape = np.shape(items_a[idx[0]])
        for i in idx:
            if items_b is not None and np.shape(items_b[i]) != shape:
                raise ValueError(f"pair {i}: images differ in shape: {shape} vs {np.shape(items_b[i])}")
        yield idx


def _to_tensor(images, idx, device):
    """uint8 HxWx3 arrays -> float32 Nx3xHxW tensor in [0, 1] (as torchvision's ToTensor)."""
    import torch

    batch = np.stack([np.asarray(images[i], dtype=np.uint8) for i in idx])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 HxWx3 images, got a batch of shape {batch.shape}")
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(255)


# ----------------------------------------------------------------------------- networks

class _WeightedNetwork:
    """A metric network on ``device`` whose weights file may be missing: ``available`` is False and
    ``reason`` says where to put the file; ``model`` is set by the subclass when the file is found."""

    def __init__(self, device, batch_size: int, file: str, given, key: str):
        self.batch_size = int(batch_size)
        self.weights_path, self.reason = find_weights(file, given, key)
        self.available = self.weights_path is not None
        # without weights nothing runs, and torch stays unloaded unless a device was named (it is still checked)
        self.device = resolve_device(device) if self.available or str(device) not in ("auto", "cpu") else None
        self.model = None


class LPIPSMetric(_WeightedNetwork):
    """LPIPS (AlexNet, v0.1) distance of uint8 image pairs; batched, on ``device``.

    ``available`` is False (and ``reason`` says why) when the AlexNet trunk weights are neither at
    ``alexnet_weights`` nor in the hub cache; calls then return NaN.
    """

    def __init__(self, device="cpu", alexnet_weights=None, batch_size: int = 16):
        super().__init__(device, batch_size, ALEXNET_FILE, alexnet_weights, "metrics.alexnet_weights (--alexnet-weights)")
        if self.available:
            import lpips

            with _hub_serving(ALEXNET_FILE, self.weights_path), _loading(self.weights_path, "AlexNet"), \
                    warnings.catch_warnings():
                # lpips asks torchvision for alexnet(pretrained=True), which warns that it is deprecated
                warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
                model = lpips.LPIPS(net="alex", version="0.1", verbose=False)
            self.model = model.to(self.device).eval()

    def __call__(self, a_batch, b_batch) -> np.ndarray:
        """Distances (float64, one per pair) of two equal-length sequences of uint8 HxWx3 images."""
        if len(a_batch) != len(b_batch):
            raise ValueError(f"{len(a_batch)} images vs {len(b_batch)} images")
        out = np.full(len(a_batch), np.nan)
        if not self.available:
            return out
        import torch

        with torch.inference_mode():
            for idx in _batches(a_batch, b_batch, self.batch_size):
                x = _to_tensor(a_batch, idx, self.device) * 2 - 1
                y = _to_tensor(b_batch, idx, self.device) * 2 - 1
                out[idx] = self.model(x, y).reshape(-1).double().cpu().numpy()
        return out


class InceptionFeatures(_WeightedNetwork):
    """2048-d pool3 features of pytorch-fid's FID Inception for uint8 HxWx3 images; batched.

    The network resizes to 299x299 bilinearly and scales [0, 1] to [-1, 1] itself, exactly as in
    ``pytorch_fid.fid_score.get_activations``. ``available``/``reason`` as in ``LPIPSMetric``.
    """

    dims = 2048

    def __init__(self, device="cpu", weights=None, batch_size: int = 16):
        super().__init__(device, batch_size, INCEPTION_FILE, weights, "metrics.inception_weights (--inception-weights)")
        if self.available:
            from pytorch_fid.inception import InceptionV3

            with _hub_serving(INCEPTION_FILE, self.weights_path), _loading(self.weights_path, "FID Inception"):
                model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[self.dims]])
            self.model = model.to(self.device).eval()

    def __call__(self, images) -> np.ndarray:
        """Features as a float64 N x 2048 array."""
        import torch

        if not self.available:
            raise RuntimeError(f"Inception weights unavailable: {self.reason}")
        feats = np.empty((len(images), self.dims))
        with torch.inference_mode():
            for idx in _batches(images, None, self.batch_size):
                pred = self.model(_to_tensor(images, idx, self.device))[0]
                feats[idx] = pred.reshape(len(idx), self.dims).cpu().numpy()
        return feats
