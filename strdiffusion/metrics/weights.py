"""Fetch the pretrained metric weights once, explicitly: ``strdiffusion weights fetch``.

Two files, both looked up by the metric stage in ``$TORCH_HOME/hub/checkpoints/`` (or at the paths
``metrics.alexnet_weights`` / ``metrics.inception_weights``):

- ``alexnet-owt-7be5be79.pth``: torchvision's AlexNet, the LPIPS trunk;
- ``pt_inception-2015-12-05-6726825d.pth``: pytorch-fid's FID Inception (FID and KID).

Like torch hub's ``check_hash``, the hex digits after the last '-' of the file name are a prefix of
the file's sha256; a download whose digest does not start with them is deleted and refused. A
download goes to a temporary name beside the target and is renamed only when complete and
verified, so an interrupted or refused download leaves nothing. Offline, the command says in one
line what to download and where to put it; the metric stage then reports ``n/a`` for the metrics they serve.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import _CHUNK, atomic_path, sha256_of, write_text_atomic

log = logging.getLogger("strdiffusion.metrics.weights")

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
# where the packages themselves download them (torchvision.models.alexnet, pytorch_fid.inception)
WEIGHTS = {
    "alexnet": dict(file=ALEXNET_FILE, url=f"https://download.pytorch.org/models/{ALEXNET_FILE}",
                    setting="metrics.alexnet_weights", used_by="LPIPS is"),
    "inception": dict(file=INCEPTION_FILE,
                      url=f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}",
                      setting="metrics.inception_weights", used_by="FID and KID are"),
}
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX


def hash_prefix(filename: str) -> str:
    """The sha256 prefix embedded in a torch hub file name ('alexnet-owt-7be5be79.pth' -> '7be5be79')."""
    match = HASH_REGEX.search(Path(filename).name)
    return match.group(1) if match else ""



def default_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` as torch.hub resolves it (``~/.cache/torch/hub/checkpoints``). Without
    importing torch (a job that only looks for a file must not pay torch's start-up): torch.hub's own rule,
    $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch; torch.hub.get_dir() when torch is loaded
    already (it may have been pointed elsewhere with torch.hub.set_dir)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def target_path(name: str, local_path=None) -> Path:
    """Where weights ``name`` ('alexnet' or 'inception') belong: ``local_path`` if given, else the hub cache."""
    return Path(local_path).expanduser() if local_path else default_dir() / WEIGHTS[name]["file"]


def is_offline_error(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, socket.gaierror))


class OfflineError(UserError):
    """The server could not be reached (no network, DNS failure, refused connection)."""


def download(url: str, dest, expected_prefix: str, timeout: float = 30.0) -> str:
    """Download ``url`` to ``dest`` atomically and return its sha256.

    Raises UserError (one line) when the digest does not start with ``expected_prefix`` (the
    partial file is deleted), when the transfer ends before the announced length, or when the
    server cannot be reached (``offline`` in the message). OSError from the local disk (ENOSPC)
    propagates to the CLI, which turns it into the disk-full line; nothing is left either way.
    """
    dest = Path(dest)
    digest = hashlib.sha256()
    received = 0
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                with open(tmp, "wb") as out:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
        except urllib.error.HTTPError as exc:
            raise UserError(f"{url}: download failed (HTTP {exc.code} {exc.reason}); check the address") from None
        except (OSError, http.client.HTTPException) as exc:
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                raise
            if received == 0 and (is_offline_error(exc) or isinstance(exc, urllib.error.URLError)):
                reason = getattr(exc, "reason", exc)
                raise OfflineError(f"cannot download ({reason})") from None
            raise UserError(f"{url}: download interrupted after {received} bytes ({exc.__class__.__name__}: "
                            f"{exc}); nothing was kept, re-run") from None
        if total is not None and total.isdigit() and received != int(total):
            raise UserError(f"{url}: download interrupted after {received} of {total} bytes; nothing was kept, re-run")
        sha = digest.hexdigest()
        if expected_prefix and not sha.startswith(expected_prefix):
            raise UserError(f"{url}: sha256 {sha[:16]}... does not start with {expected_prefix} (the hash in the file "
                            f"name {dest.name}); the download was deleted; check the address or download it by hand")
    return sha


def fetch_one(name: str, local_path=None, url: str | None = None, timeout: float = 30.0) -> dict:
    """Make sure weights ``name`` are present and verified at their target path; download if missing.

    Returns a status dict ``{name, path, present, action, sha256, reason}``; ``action`` is
    'present' (already there and verified), 'downloaded' or 'missing' (offline: see ``reason``).
    A wrong hash (download or existing file) raises UserError.
    """
    spec = WEIGHTS[name]
    path = target_path(name, local_path)
    url = url or spec["url"]
    prefix = hash_prefix(spec["file"])
    status = dict(name=name, file=spec["file"], path=str(path), url=url, present=False, action="missing",
                  sha256="", reason="")
    if path.is_file():
        sha = sha256_of(path)
        if not sha.startswith(prefix):
            raise UserError(f"{path}: sha256 {sha[:16]}... does not start with {prefix} (the hash in {spec['file']}); "
                            "the file is damaged or not these weights; delete it and re-run")
        status.update(present=True, action="present", sha256=sha)
        return status
    try:
        sha = download(url, path, prefix, timeout)
    except OfflineError as exc:
        status["reason"] = (f"{spec['file']}: {exc}; offline? download {url} and put it at {path} "
                            f"(or set {spec['setting']} to your copy); {spec['used_by']} n/a until then")
        return status
    status.update(present=True, action="downloaded", sha256=sha)
    return status


def fetch(names=("alexnet", "inception"), paths: dict | None = None, urls: dict | None = None,
          timeout: float = 30.0) -> list[dict]:
    paths, urls = paths or {}, urls or {}
    return [fetch_one(n, paths.get(n) or None, urls.get(n) or None, timeout) for n in names]


def fetch_command(only: str, paths: dict, urls: dict, timeout: float, allow_offline: bool, status: str) -> int:
    """``strdiffusion weights fetch``: fetch the weights named in ``only`` (comma separated), print what is
    where, write the JSON ``status`` (when given); missing weights are an error unless ``allow_offline``."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    for n in names:
        if n not in WEIGHTS:
            raise UserError(f"--only {only}: unknown weights '{n}'; choose from {', '.join(WEIGHTS)}")
    results = fetch(names, paths, urls, timeout)
    if status:
        write_text_atomic(status, json.dumps(results, indent=2) + "\n")
    missing = [r for r in results if not r["present"]]
    for r in results:
        if r["present"]:
            print(f"{r['name']}: {r['action']} {r['path']} (sha256 {r['sha256'][:12]}...)")
    if missing:
        if allow_offline:
            for r in missing:
                print(f"warning: {r['reason']}", file=sys.stderr)
            return 0
        raise UserError(" | ".join(r["reason"] for r in missing))
    return 0
