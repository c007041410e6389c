"""Tests for strdiffusion/metrics/weights.py: the real download code against local stand-in files.

The stand-ins are a few random bytes named like torch hub files (``standin-<sha256 prefix>.pth``);
they are served through ``file://`` URLs or a server on 127.0.0.1. They are not weights, and nothing
here computes a metric with them.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from strdiffusion.cli import main as cli_main
from strdiffusion.io.errors import UserError
from strdiffusion.metrics import weights as W

PAYLOAD = bytes(range(256)) * 512  # 128 KiB, spans several read chunks of the server's socket
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


@pytest.fixture()
def standin(tmp_path, monkeypatch):
    """A stand-in 'alexnet' entry whose file name carries the payload's true hash prefix."""
    src = tmp_path / "server" / f"standin-{PREFIX}.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    monkeypatch.setitem(W.WEIGHTS, "alexnet", dict(file=src.name, url=src.as_uri(), setting="metrics.alexnet_weights",
                                                   used_by="LPIPS is"))
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return src, home / "hub" / "checkpoints" / src.name


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


class _Handler(http.server.BaseHTTPRequestHandler):
    body = PAYLOAD
    announce = len(PAYLOAD)  # Content-Length sent; larger than the body = the connection drops early

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(self.announce))
        self.end_headers()
        self.wfile.write(self.body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    """An HTTP server on 127.0.0.1 whose handler class the test may adjust; yields its base URL."""
    handler = type("H", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_weights_fetch_hash_prefix_from_file_name():
    assert W.hash_prefix(W.ALEXNET_FILE) == "7be5be79"
    assert W.hash_prefix(W.INCEPTION_FILE) == "6726825d"
    assert W.hash_prefix("no_hash.pth") == ""


def test_weights_fetch_good_hash_file_url_is_kept(standin):
    src, target = standin
    status = W.fetch_one("alexnet")
    assert status["action"] == "downloaded" and status["present"]
    assert target.read_bytes() == PAYLOAD
    assert status["sha256"].startswith(PREFIX)
    assert _leftovers(target.parent) == [target.name]  # no temporary file beside it
    again = W.fetch_one("alexnet")  # second call: verified in place, not downloaded
    assert again["action"] == "present"


def test_weights_fetch_good_hash_http_to_configured_path(standin, server, tmp_path):
    src, _ = standin
    base, _handler = server
    dest = tmp_path / "mine" / "alex.pth"  # metrics.alexnet_weights: the hash comes from the canonical name
    status = W.fetch_one("alexnet", local_path=dest, url=f"{base}/{src.name}")
    assert status["action"] == "downloaded" and dest.read_bytes() == PAYLOAD


def test_weights_fetch_bad_hash_is_refused_and_deleted(tmp_path, monkeypatch, standin):
    src, target = standin
    src.write_bytes(PAYLOAD[::-1])  # same name, other content: the name's hash no longer matches
    with pytest.raises(UserError) as info:
        W.fetch_one("alexnet")
    msg = str(info.value)
    assert "\n" not in msg and f"does not start with {PREFIX}" in msg and "deleted" in msg
    assert not target.exists() and _leftovers(target.parent) == []


def test_weights_fetch_bad_hash_of_existing_file_is_reported(standin):
    _, target = standin
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="delete it and re-run"):
        W.fetch_one("alexnet")


def test_weights_fetch_interrupted_download_leaves_nothing(standin, server):
    src, target = standin
    base, handler = server
    handler.body = PAYLOAD[: len(PAYLOAD) // 3]  # the connection closes after a third of the announced bytes
    with pytest.raises(UserError) as info:
        W.fetch_one("alexnet", url=f"{base}/{src.name}")
    assert "interrupted" in str(info.value) and "\n" not in str(info.value)
    assert not target.exists() and _leftovers(target.parent) == []


def test_weights_fetch_offline_message_says_what_and_where(standin, capsys, tmp_path):
    src, target = standin
    with socket.socket() as s:  # a port with nobody listening: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{src.name}"
    assert cli_main(["weights", "fetch", "--only", "alexnet", "--alexnet-url", url, "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert url in err and str(target) in err and "offline" in err and "metrics.alexnet_weights" in err
    assert not target.exists()
    # the workflow's rule: a warning, exit 0, a status file saying the file is missing (metrics stay n/a)
    status = tmp_path / "weights.json"
    assert cli_main(["weights", "fetch", "--only", "alexnet", "--alexnet-url", url, "--timeout", "5",
                     "--allow-offline", "--status", str(status)]) == 0
    assert capsys.readouterr().err.startswith("warning: ")
    assert json.loads(status.read_text())[0]["present"] is False
