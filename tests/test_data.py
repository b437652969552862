"""src/data.py: parsing the UCI layout, the streamed download and its cache, and bad files."""

import gzip
import io
import re
import socket
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.core.errors import DataError
from src.data.higgs import load_higgs
from tests.helpers import free_port

N_FEATURES = 28


def data_cfg(path=None, *, cache_dir, n_validation=100, n_train=400, url="http://127.0.0.1:9/HIGGS.csv.gz"):
    """The `data` group as load_higgs sees it (the real group composes to the same keys)."""
    return OmegaConf.create(
        dict(
            name="higgs",
            path=None if path is None else str(path),
            url=url,
            n_features=N_FEATURES,
            n_validation=n_validation,
            n_train=n_train,
            cache_dir=str(cache_dir),
            timeout_seconds=5,
        )
    )


@pytest.fixture(scope="module")
def sample_rows(higgs_file) -> np.ndarray:
    """numpy's own read of the whole sample, as float32."""
    return np.loadtxt(higgs_file, delimiter=",", dtype=np.float64).astype(np.float32)


@pytest.fixture(scope="module")
def sample_lines(higgs_file):
    """The sample's first 600 lines, as text without line endings."""
    with gzip.open(higgs_file, "rt") as f:
        return [next(f).rstrip("\n") for _ in range(600)]


# --- the real sample -----------------------------------------------------------


def test_real_sample_split_matches_numpy(make_cfg, higgs_file, sample_rows):
    n_val = 1000
    n_train = len(sample_rows) - n_val  # the whole file: 9,984 training rows for the real sample
    cfg = make_cfg(f"data.n_validation={n_val}", f"data.n_train={n_train}")
    splits = load_higgs(cfg.data)

    for array in (splits.x_val, splits.y_val, splits.x_train, splits.y_train):
        assert array.dtype == np.float32
    assert splits.x_val.shape == (n_val, N_FEATURES) and splits.y_val.shape == (n_val, 1)
    assert splits.x_train.shape == (n_train, N_FEATURES) and splits.y_train.shape == (n_train, 1)
    np.testing.assert_array_equal(splits.y_val[:, 0], sample_rows[:n_val, 0])
    np.testing.assert_array_equal(splits.x_val, sample_rows[:n_val, 1:])
    np.testing.assert_array_equal(splits.y_train[:, 0], sample_rows[n_val:, 0])
    np.testing.assert_array_equal(splits.x_train, sample_rows[n_val:, 1:])
    assert set(np.unique(splits.y_train)) <= {0.0, 1.0}
    assert splits.source == str(Path(higgs_file).resolve())


def test_n_train_larger_than_the_file_names_file_and_maximum(tmp_path, higgs_file, sample_rows):
    n_max = len(sample_rows) - 1000
    with pytest.raises(DataError) as err:
        load_higgs(data_cfg(higgs_file, n_validation=1000, n_train=n_max + 1, cache_dir=tmp_path / "cache"))
    message = str(err.value)
    assert str(Path(higgs_file).resolve()) in message
    assert f"data.n_train to at most {n_max}" in message
    assert "\n" not in message


def test_n_validation_alone_larger_than_the_file(tmp_path, higgs_file, sample_rows):
    with pytest.raises(DataError, match=r"lower data\.n_validation=20000 .*<= " + str(len(sample_rows))):
        load_higgs(data_cfg(higgs_file, n_validation=20_000, n_train=10, cache_dir=tmp_path / "cache"))


# --- small files: line endings, blank lines, gzip or not --------------------------


def _write(path: Path, text: str, *, gz: bool) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "ending, trailer",
    [("\n", ""), ("\r\n", ""), ("\n", "\n"), ("\r\n", "\r\n\r\n"), ("\n", "\n \n")],
    ids=["lf", "crlf", "lf-trailing-blank", "crlf-trailing-blanks", "trailing-spaces-line"],
)
def test_line_endings_and_trailing_blank_lines(tmp_path, sample_lines, sample_rows, gz, ending, trailer):
    """Plain or gzip (by content, whatever the name), LF or CRLF, blank lines at the end: the same rows."""
    text = ending.join(sample_lines[:30]) + ending + trailer
    path = _write(tmp_path / "rows.csv.gz", text, gz=gz)  # a plain file named .gz is still read as plain
    splits = load_higgs(data_cfg(path, n_validation=10, n_train=20, cache_dir=tmp_path / "cache"))
    np.testing.assert_array_equal(splits.x_val, sample_rows[:10, 1:])
    np.testing.assert_array_equal(splits.x_train, sample_rows[10:30, 1:])
    # asking for more rows than there are: the row-count error, not a complaint about the blank line
    with pytest.raises(DataError, match=r"has 30 rows.*data\.n_train to at most 20"):
        load_higgs(data_cfg(path, n_validation=10, n_train=21, cache_dir=tmp_path / "cache"))


def test_byte_order_mark_is_ignored(tmp_path, sample_lines, sample_rows):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(sample_lines[:20]) + "\n").encode())
    splits = load_higgs(data_cfg(path, n_validation=5, n_train=15, cache_dir=tmp_path / "cache"))
    np.testing.assert_array_equal(splits.y_val[:, 0], sample_rows[:5, 0])


def test_reading_stops_before_a_later_bad_line(tmp_path, sample_lines):
    """Only the rows asked for are read: garbage after them does not matter."""
    path = _write(tmp_path / "rows.csv", "\n".join(sample_lines[:30]) + "\nnot,a,row\n", gz=False)
    assert len(load_higgs(data_cfg(path, n_validation=10, n_train=20, cache_dir=tmp_path / "cache")).x_train) == 20


BAD_FILES = [
    ("empty-file", r"rows\.csv\.gz: no data rows \(empty file\?\)"),
    ("empty-gzip", r"rows\.csv\.gz: no data rows \(empty file\?\)"),
    ("truncated-gzip", r"rows\.csv\.gz: corrupt or truncated gzip data after line \d+: Compressed file ended"),
    ("corrupt-gzip", r"rows\.csv\.gz: corrupt or truncated gzip data before the first line"),
    ("binary", r"rows\.csv\.gz: not a CSV or gzip-compressed CSV"),
    ("header", r"rows\.csv\.gz line 1: non-numeric value 'label' in column 1 \(the UCI layout has no header line\)"),
    ("28-fields", r"rows\.csv\.gz line 3: expected 29 comma-separated values \(label \+ data\.n_features=28\), got 28"),
    ("30-fields", r"rows\.csv\.gz line 3: expected 29 comma-separated values .*got 30"),
    ("non-numeric", r"rows\.csv\.gz line 3: non-numeric value 'abc' in column 5$"),
    ("nan", r"rows\.csv\.gz line 3: non-finite value 'nan' in column 2 \(feature 1\)"),
    ("inf", r"rows\.csv\.gz line 3: non-finite value '-inf' in column 29 \(feature 28\)"),
    ("label-2", r"rows\.csv\.gz line 3: label must be 0 or 1, got '2'"),
    ("beyond-float32", r"rows\.csv\.gz line 3: non-finite value '1e39' in column 5 \(feature 4\) \(beyond float32, "),
]


@pytest.mark.parametrize("case, expected", BAD_FILES, ids=[case for case, _ in BAD_FILES])
def test_bad_file_is_one_line_data_error(tmp_path, sample_lines, case, expected):
    lines = list(sample_lines[:60])
    fields = lines[2].split(",")
    text = None
    raw = None
    if case == "empty-file":
        raw = b""
    elif case == "empty-gzip":
        raw = gzip.compress(b"")
    elif case == "truncated-gzip":
        full = gzip.compress(("\n".join(lines) + "\n").encode())
        raw = full[: len(full) // 2]
    elif case == "corrupt-gzip":
        header = gzip.compress(b"")[:10]
        raw = header + bytes(range(256)) * 8
    elif case == "binary":
        raw = bytes(range(128, 256)) * 8
    elif case == "header":
        text = ",".join(["label"] + [f"f{i}" for i in range(1, 29)])
        lines.insert(0, text)
    elif case == "28-fields":
        lines[2] = ",".join(fields[:-1])
    elif case == "30-fields":
        lines[2] = ",".join(fields + ["0.5"])
    elif case == "non-numeric":
        lines[2] = ",".join(fields[:4] + ["abc"] + fields[5:])
    elif case == "nan":
        lines[2] = ",".join(fields[:1] + ["nan"] + fields[2:])
    elif case == "inf":
        lines[2] = ",".join(fields[:-1] + ["-inf"])
    elif case == "beyond-float32":  # finite in float64, inf in the float32 training reads
        lines[2] = ",".join(fields[:4] + ["1e39"] + fields[5:])
    elif case == "label-2":
        lines[2] = ",".join(["2"] + fields[1:])
    if raw is None:
        raw = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "rows.csv.gz"
    path.write_bytes(raw)

    with pytest.raises(DataError) as err:
        load_higgs(data_cfg(path, n_validation=10, n_train=40, cache_dir=tmp_path / "cache"))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert re.search(expected, message), message


@pytest.mark.parametrize(
    "make_path, expected",
    [
        (lambda tmp: tmp / "missing.csv.gz", "no such file"),
        (lambda tmp: tmp, "is a directory, not a file"),
        (lambda tmp: tmp / "file.csv" / "below-a-file.csv", "Not a directory"),
    ],
    ids=["missing", "directory", "parent-is-a-file"],
)
def test_unopenable_path_names_data_path(tmp_path, make_path, expected):
    (tmp_path / "file.csv").write_text("")
    path = make_path(tmp_path)
    with pytest.raises(DataError) as err:
        load_higgs(data_cfg(path, cache_dir=tmp_path / "cache"))
    assert str(err.value) == f"data.path: {path}: {expected}"


# --- the streamed download --------------------------------------------------------


def write_big_uci_gzip(path: Path, n_rows: int, block_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """A single-member gzip CSV in the UCI layout with `n_rows` rows; returns its first block as float32.

    The first `block_rows` rows are distinct (round-tripping float32 text);
    the file repeats them, which costs nothing to generate but compresses like
    fresh data because the block is far larger than gzip's 32 KiB window.
    """
    rng = np.random.default_rng(seed)
    block = rng.normal(size=(block_rows, 1 + N_FEATURES)).astype(np.float32)
    block[:, 0] = rng.integers(0, 2, size=block_rows)
    buf = io.StringIO()
    np.savetxt(buf, block, fmt="%.9g", delimiter=",")
    text = buf.getvalue().encode()
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    assert n_rows % block_rows == 0
    with open(path, "wb") as f:
        for _ in range(n_rows // block_rows):
            f.write(compressor.compress(text))
        f.write(compressor.flush())
    return block


def _cached_rows(path: Path) -> np.ndarray:
    from src.data.cache import _entries

    (entry,) = [e for e in _entries(path.parent) if e.path == path]
    return entry.head(None)


class _FileServer:
    """A real HTTP server on 127.0.0.1 serving one file, counting the bytes it managed to send."""

    CHUNK = 16 * 1024

    def __init__(self, path: Path, *, cut_after: Optional[int] = None):
        self.path = path
        self.cut_after = cut_after  # close the connection after this many bytes of the body
        self.requests = 0
        self.bytes_sent = 0
        self.finished = threading.Event()  # set when the handler stopped sending (done or cut off)
        self.send_error = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                if self.path != "/HIGGS.csv.gz":
                    self.send_error(404)
                    return
                stat = server.path.stat()
                self.send_response(200)
                self.send_header("Content-Length", str(stat.st_size))
                self.send_header("ETag", f'"{stat.st_mtime_ns}-{stat.st_size}"')
                self.end_headers()

            def do_GET(self):
                server.requests += 1
                if self.path != "/HIGGS.csv.gz":
                    self.send_error(404)
                    return
                # a small send buffer, so "sent" is close to what the client read, not what the kernel queued
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.CHUNK)
                size = server.path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    with open(server.path, "rb") as f:
                        while chunk := f.read(server.CHUNK):
                            self.wfile.write(chunk)
                            server.bytes_sent += len(chunk)
                            if server.cut_after is not None and server.bytes_sent >= server.cut_after:
                                break
                except OSError as exc:  # the client closed the connection: what we want
                    server.send_error = exc
                finally:
                    server.finished.set()

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/HIGGS.csv.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_download_streams_only_the_rows_it_needs_then_works_offline(tmp_path):
    big = tmp_path / "HIGGS.csv.gz"
    block = write_big_uci_gzip(big, n_rows=50_000)
    size = big.stat().st_size
    assert size > 5_000_000
    server = _FileServer(big)
    cache_dir = tmp_path / "cache"
    cfg = data_cfg(n_validation=100, n_train=1000, url=server.url, cache_dir=cache_dir)
    try:
        splits = load_higgs(cfg)
        # the code closed the response after its rows: the server's next writes failed
        assert server.finished.wait(10), "the server is still sending: the HTTP response was not closed"
    finally:
        server.close()

    np.testing.assert_array_equal(splits.x_val, block[:100, 1:])
    np.testing.assert_array_equal(splits.y_val[:, 0], block[:100, 0])
    np.testing.assert_array_equal(splits.x_train, block[100:1100, 1:])
    np.testing.assert_array_equal(splits.y_train[:, 0], block[100:1100, 0])
    assert splits.source == server.url
    assert server.requests == 1
    assert server.send_error is not None, "the whole file was sent"
    assert server.bytes_sent < size / 10, f"sent {server.bytes_sent} of {size} bytes for 1,100 rows"

    # the parsed rows are cached under data.cache_dir ...
    (cached,) = cache_dir.glob("*.rows")
    np.testing.assert_array_equal(_cached_rows(cached)[:, 1:], block[:1100, 1:])
    assert not [p for p in cache_dir.iterdir() if p.suffix not in (".rows", ".lock")], "leftover temporary files"

    # ... so a rerun works with the server gone (its port now refuses connections)
    again = load_higgs(cfg)
    np.testing.assert_array_equal(again.x_train, splits.x_train)
    fewer = load_higgs(data_cfg(n_validation=50, n_train=500, url=server.url, cache_dir=cache_dir))
    np.testing.assert_array_equal(fewer.x_val, block[:50, 1:])
    assert server.requests == 1

    # asking for more rows than the cache holds needs the network again: one clear line
    with pytest.raises(DataError) as err:
        load_higgs(data_cfg(n_validation=100, n_train=2000, url=server.url, cache_dir=cache_dir))
    assert "set data.path to a local copy" in str(err.value)


def test_download_without_cache_or_server_is_one_line_naming_data_path(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/HIGGS.csv.gz"
    with pytest.raises(DataError) as err:
        load_higgs(data_cfg(url=url, cache_dir=tmp_path / "empty-cache"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data.url: cannot reach {url} (")
    assert message.endswith("set data.path to a local copy of HIGGS.csv.gz")


def test_unreadable_cache_is_a_cache_miss(tmp_path):
    """A corrupt cache file is ignored and replaced by a fresh download."""
    big = tmp_path / "HIGGS.csv.gz"
    block = write_big_uci_gzip(big, n_rows=2000)
    server = _FileServer(big)
    cache_dir = tmp_path / "cache"
    cfg = data_cfg(n_validation=10, n_train=90, url=server.url, cache_dir=cache_dir)
    try:
        load_higgs(cfg)
        (cached,) = cache_dir.glob("*.rows")
        cached.write_bytes(b"not a cache file")
        splits = load_higgs(cfg)
    finally:
        server.close()
    assert server.requests == 2
    np.testing.assert_array_equal(splits.x_train, block[10:100, 1:])
    assert _cached_rows(cached).shape == (100, 1 + N_FEATURES)


def test_download_not_found_is_one_line_naming_data_path(tmp_path):
    big = tmp_path / "HIGGS.csv.gz"
    write_big_uci_gzip(big, n_rows=2000)
    server = _FileServer(big)
    url = server.url.replace("HIGGS.csv.gz", "missing.csv.gz")
    try:
        with pytest.raises(DataError) as err:
            load_higgs(data_cfg(url=url, cache_dir=tmp_path / "cache"))
    finally:
        server.close()
    assert str(err.value) == f"data.url: cannot download {url} (Not Found); set data.path to a local copy of HIGGS.csv.gz"
    assert not (tmp_path / "cache").exists()


def test_download_cut_short_is_one_line_and_not_cached(tmp_path):
    """The server drops the connection mid-file: a clear error, and no partial cache."""
    big = tmp_path / "HIGGS.csv.gz"
    write_big_uci_gzip(big, n_rows=2000)
    server = _FileServer(big, cut_after=64 * 1024)
    cache_dir = tmp_path / "cache"
    try:
        with pytest.raises(DataError) as err:
            load_higgs(data_cfg(n_validation=100, n_train=1500, url=server.url, cache_dir=cache_dir))
    finally:
        server.close()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{server.url}: corrupt or truncated gzip data after line "), message
    assert not cache_dir.exists() or not [p for p in cache_dir.iterdir() if p.suffix != ".lock"]


def test_training_stream_depends_on_the_seed_alone(sample_rows):
    """Every iterator opened on the stream sees the same batches; each epoch is a fresh permutation."""


    from src.data.splits import Splits
    from src.data.pipeline import make_datasets

    rows = sample_rows[:300]
    splits = Splits(x_val=rows[:50, 1:], y_val=rows[:50, :1], x_train=rows[50:, 1:], y_train=rows[50:, :1], source="s", name="higgs")
    train, _ = make_datasets(splits, batch_size=50, seed=7)
    first = [x.numpy() for x, _ in train.take(10)]  # two epochs of 250 rows
    again = [x.numpy() for x, _ in train.take(10)]  # a second iterator, as Keras opens under a strategy
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    epoch0, epoch1 = np.concatenate(first[:5]), np.concatenate(first[5:])
    key = lambda a: np.sort(a[:, 0])
    assert np.array_equal(key(epoch0), np.sort(splits.x_train[:, 0]))  # a permutation of the training rows
    assert np.array_equal(key(epoch1), np.sort(splits.x_train[:, 0]))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled every epoch
    other_seed, _ = make_datasets(splits, batch_size=50, seed=8)
    assert not np.array_equal(next(iter(other_seed))[0].numpy(), first[0])



def test_batches_cut_the_endless_concatenation_of_epoch_permutations(sample_rows):
    """The stream's definition, which reruns of earlier runs rely on: a batch may span two epochs."""
    import tensorflow as tf

    from src.data.splits import Splits
    from src.data.pipeline import make_datasets

    rows = sample_rows[:153]  # 103 training rows, batches of 25: every epoch ends inside a batch
    splits = Splits(x_val=rows[:50, 1:], y_val=rows[:50, :1], x_train=rows[50:, 1:], y_train=rows[50:, :1], source="s", name="higgs")
    train, _ = make_datasets(splits, batch_size=25, seed=3)
    got = np.concatenate([x.numpy() for x, _ in train.take(13)])  # 325 rows: three epochs and a bit
    orders = [
        tf.random.experimental.stateless_shuffle(tf.range(103), seed=tf.constant([3, epoch], tf.int64)).numpy()
        for epoch in range(4)
    ]
    np.testing.assert_array_equal(got, splits.x_train[np.concatenate(orders)[:325]])


def test_a_stream_started_at_a_step_is_the_rest_of_the_whole_stream(sample_rows):
    """What a resumed run trains on: from batch k on, the uninterrupted stream's batches, epoch boundaries and all."""
    from src.data.splits import Splits
    from src.data.pipeline import make_datasets

    rows = sample_rows[:153]  # 103 training rows, batches of 25: epochs end inside batches
    splits = Splits(x_val=rows[:50, 1:], y_val=rows[:50, :1], x_train=rows[50:, 1:], y_train=rows[50:, :1], source="s", name="higgs")
    whole = [x.numpy() for x, _ in make_datasets(splits, batch_size=25, seed=3)[0].take(20)]
    for start in (1, 4, 5, 12):  # inside the first epoch, at its end, past a boundary, in the third permutation
        rest = [x.numpy() for x, _ in make_datasets(splits, batch_size=25, seed=3, start_step=start)[0].take(20 - start)]
        assert all(np.array_equal(a, b) for a, b in zip(rest, whole[start:])), start


def test_the_pipelines_run_without_the_autotuning_thread_that_froze_jobs_at_their_end(sample_rows):
    # Deleting an iterator waits for tf.data's autotuning thread with the GIL held: a sweep's jobs
    # froze for 2-39 s after their last epoch, every thread idle (src/data.py: pipeline_options).
    from src.data.splits import Splits
    from src.data.pipeline import make_datasets

    rows = sample_rows[:300]
    splits = Splits(x_val=rows[:50, 1:], y_val=rows[:50, :1], x_train=rows[50:, 1:], y_train=rows[50:, :1], source="s", name="higgs")
    for dataset in make_datasets(splits, batch_size=50, seed=7):
        assert dataset.options().autotune.enabled is False
