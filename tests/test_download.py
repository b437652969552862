"""src/data/download.py: a resumable download against a real local HTTP server that cuts, ignores Range, changes or 404s."""

import hashlib
import logging
import re
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest

from src.core.errors import DataError
from src.data import download
from src.data.download import download_file, remote_identity
from tests.helpers import free_port

SIZE = 4 * 1024 * 1024 + 123  # not a multiple of the client's 1 MiB chunk
TIMEOUT = 5.0


def _random_file(path: Path, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).bytes(SIZE))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _RangeServer:
    """A real HTTP server on 127.0.0.1 serving one file with Range and If-Range, and knobs to misbehave."""

    def __init__(self, path: Path, *, cuts: Sequence[int] = (), honour_range: bool = True,
                 changes: Optional[Dict[int, Path]] = None, missing: bool = False):
        self.path = path
        self.cuts = list(cuts)  # GET i's body stops (the connection closes) after cuts[i] bytes; later GETs are whole
        self.honour_range = honour_range  # False: every GET is a 200 with the whole file
        self.changes = dict(changes or {})  # from GET i on, the file served is changes[i] (a new ETag)
        self.missing = missing  # every request is a 404
        self.gets = []  # per GET: its Range and If-Range headers and the status answered
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                if server.missing:
                    self.send_error(404)
                    return
                data = server.path.read_bytes()
                self.send_response(200)
                server.send_file_headers(self, data)
                self.end_headers()

            def do_GET(self):
                record = {"range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")}
                with server.lock:
                    index = len(server.gets)
                    server.gets.append(record)
                    server.path = server.changes.get(index, server.path)
                    cut = server.cuts[index] if index < len(server.cuts) else None
                if server.missing:
                    record["status"] = 404
                    self.send_error(404)
                    return
                data = server.path.read_bytes()
                match = re.fullmatch(r"bytes=(\d+)-", record["range"] or "")
                start = int(match.group(1)) if match and server.honour_range else None
                if record["if_range"] is not None and record["if_range"] != _etag(data):
                    start = None  # the file changed since the client's bytes: send all of the new one
                if start is not None and start >= len(data):
                    record["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                record["status"] = 200 if start is None else 206
                body = data if start is None else data[start:]
                self.send_response(record["status"])
                if start is not None:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                server.send_file_headers(self, data, length=len(body))
                self.end_headers()
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/HIGGS.csv.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def send_file_headers(handler, data: bytes, length: Optional[int] = None):
        handler.send_header("Content-Type", "application/gzip")
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", _etag(data))
        handler.send_header("Last-Modified", formatdate(0, usegmt=True))

    def range_starts(self):
        """The byte offset each GET asked for (None: the whole file)."""
        return [None if g["range"] is None else int(g["range"][len("bytes="):-1]) for g in self.gets]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_FIRST", 0.0)


@pytest.fixture
def serve():
    servers = []

    def start(path, **knobs):
        servers.append(_RangeServer(path, **knobs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_cut_connections_resume_with_range_and_give_the_exact_bytes(tmp_path, serve, caplog, capsys):
    source = _random_file(tmp_path / "source.bin", seed=0)
    server = serve(source, cuts=[700_000, 1_500_000, 300_000])
    dest = tmp_path / "out" / "HIGGS.csv.gz"
    dest.parent.mkdir()
    with caplog.at_level(logging.INFO, logger="src.data.download"):
        assert download_file(server.url, dest, TIMEOUT) == dest

    assert _sha(dest) == _sha(source)
    assert server.range_starts() == [None, 700_000, 2_200_000, 2_500_000]
    assert [g["status"] for g in server.gets] == [200, 206, 206, 206]
    assert {g["if_range"] for g in server.gets[1:]} == {_etag(source.read_bytes())}
    assert list(dest.parent.iterdir()) == [dest], "a .part was left behind"
    resumes = [r.getMessage() for r in caplog.records if "resuming at byte" in r.getMessage()]
    assert [int(m.rsplit(" ", 1)[1]) for m in resumes] == [700_000, 2_200_000, 2_500_000]
    assert "download" in capsys.readouterr().err  # the progress bar


def test_server_ignoring_range_restarts_from_zero(tmp_path, serve):
    source = _random_file(tmp_path / "source.bin", seed=0)
    server = serve(source, cuts=[1_000_000], honour_range=False)
    dest = tmp_path / "HIGGS.csv.gz"
    download_file(server.url, dest, TIMEOUT, progress=False)

    assert server.range_starts() == [None, 1_000_000]
    assert [g["status"] for g in server.gets] == [200, 200]
    assert dest.stat().st_size == SIZE
    assert _sha(dest) == _sha(source)


def test_a_server_without_range_that_always_cuts_at_the_same_byte_fails_after_bounded_attempts(tmp_path, serve):
    """Every attempt receives bytes and starts over from byte 0: only net progress counts, so it ends in one line
    (it looped for ever, 783 warnings in 200 s)."""
    source = _random_file(tmp_path / "source.bin", seed=0)
    server = serve(source, cuts=[1_000_000] * 50, honour_range=False)
    with pytest.raises(DataError, match=r"^data.url: download of \S+ failed after 6 attempts \(the connection closed "
                                        r"at byte 1000000 of \d+\)"):
        download_file(server.url, tmp_path / "HIGGS.csv.gz", TIMEOUT, progress=False)
    assert len(server.gets) == 6


def test_file_changed_mid_download_gives_the_new_file_not_a_splice(tmp_path, serve):
    old = _random_file(tmp_path / "old.bin", seed=0)
    new = _random_file(tmp_path / "new.bin", seed=1)  # the same size: a splice would not show in the length
    server = serve(old, cuts=[1_000_000], changes={1: new})
    dest = tmp_path / "HIGGS.csv.gz"
    download_file(server.url, dest, TIMEOUT, progress=False)

    assert server.gets[1]["if_range"] == _etag(old.read_bytes())
    assert [g["status"] for g in server.gets] == [200, 200]
    assert _sha(dest) == _sha(new)


def test_stalled_download_keeps_the_part_and_a_later_call_resumes_it(tmp_path, serve):
    source = _random_file(tmp_path / "source.bin", seed=0)
    stalling = serve(source, cuts=[1_000_000] + [0] * 10)  # then only headers: no progress
    dest = tmp_path / "HIGGS.csv.gz"
    part = tmp_path / "HIGGS.csv.gz.part"
    with pytest.raises(DataError) as err:
        download_file(stalling.url, dest, TIMEOUT, progress=False, max_stalls=3)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data.url: download of {stalling.url} failed after 4 attempts (")
    assert message.endswith(f"; the partial file {part} resumes next time")
    assert stalling.range_starts() == [None, 1_000_000, 1_000_000, 1_000_000]
    assert not dest.exists()
    assert part.read_bytes() == source.read_bytes()[:1_000_000]

    healthy = serve(source)
    download_file(healthy.url, dest, TIMEOUT, progress=False)
    assert healthy.range_starts() == [1_000_000]
    assert _sha(dest) == _sha(source)
    assert not part.exists()


@pytest.mark.parametrize("extra", [0, 1000], ids=["complete", "too-long"])
def test_leftover_part_past_the_end_is_done_only_if_the_sizes_match(tmp_path, serve, extra):
    source = _random_file(tmp_path / "source.bin", seed=0)
    server = serve(source)
    dest = tmp_path / "HIGGS.csv.gz"
    (tmp_path / "HIGGS.csv.gz.part").write_bytes(source.read_bytes() + b"x" * extra)
    download_file(server.url, dest, TIMEOUT, progress=False)

    assert server.range_starts() == ([SIZE] if extra == 0 else [SIZE + extra, None])
    assert server.gets[0]["status"] == 416
    assert _sha(dest) == _sha(source)
    assert not (tmp_path / "HIGGS.csv.gz.part").exists()


def test_not_found_is_one_line_and_writes_nothing(tmp_path, serve):
    server = serve(tmp_path / "absent.bin", missing=True)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError) as err:
        download_file(server.url, out / "HIGGS.csv.gz", TIMEOUT, progress=False)
    assert str(err.value) == f"data.url: cannot download {server.url} (Not Found)"
    assert list(out.iterdir()) == []
    assert len(server.gets) == 1, "a 404 was retried"

    with pytest.raises(DataError) as err:
        remote_identity(server.url, TIMEOUT)
    assert str(err.value) == f"data.url: cannot download {server.url} (Not Found)"


def test_remote_identity_is_what_the_server_sends(tmp_path, serve):
    source = _random_file(tmp_path / "source.bin", seed=0)
    server = serve(source)
    assert remote_identity(server.url, TIMEOUT) == {
        "url": server.url,
        "length": SIZE,
        "etag": _etag(source.read_bytes()),
        "last_modified": formatdate(0, usegmt=True),
    }
    assert server.gets == [], "a HEAD request should not fetch the body"


def test_remote_identity_of_an_unreachable_server_is_one_line():
    url = f"http://127.0.0.1:{free_port()}/HIGGS.csv.gz"
    with pytest.raises(DataError) as err:
        remote_identity(url, TIMEOUT)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data.url: cannot reach {url} (") and message.endswith(")")


def test_every_row_of_a_url_downloads_resumably_is_cached_and_then_serves_offline(tmp_path, serve, caplog):
    """data.n_train=-1 with no data.path: the whole file, cut twice on the way, becomes the cache's rows."""
    import gzip

    from omegaconf import OmegaConf

    from src.data.higgs import load_higgs
    from src.data.synthetic import uci_block, uci_text

    block = uci_block(5000, seed=2)
    source = tmp_path / "HIGGS.csv.gz"
    source.write_bytes(gzip.compress(uci_text(block)))
    third = source.stat().st_size // 3
    server = serve(source, cuts=[third, third])
    cache = tmp_path / "cache"
    cfg = OmegaConf.create(dict(name="higgs", path=None, url=server.url, n_features=28, n_validation=1000,
                                n_train=-1, cache_dir=str(cache), timeout_seconds=TIMEOUT))
    splits = load_higgs(cfg)
    np.testing.assert_array_equal(splits.x_train, block[1000:, 1:])
    np.testing.assert_array_equal(splits.y_val, block[:1000, :1])
    assert server.range_starts() == [None, third, 2 * third]
    assert not list((cache / "downloads").iterdir()), "the download stays once its rows are cached"

    server.close()  # offline from here on
    with caplog.at_level(logging.WARNING):
        again = load_higgs(cfg)
    np.testing.assert_array_equal(again.x_train, splits.x_train)
    assert f"data.url: cannot reach {server.url}" in caplog.text and "using its rows cached on" in caplog.text
