"""The parsed-rows cache (src/data/cache.py) and `python -m src.data`: identity, sharing, never stale, never half-written."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.core.errors import DataError
from src.core.schema import PROJECT_ROOT
from src.data.cache import HEADER_BYTES, LEGACY_MAGIC, MAGIC
from src.data.higgs import load_higgs
from src.data.synthetic import uci_block, uci_text, write_uci_gzip
from tests.helpers import error_lines, run_module


def data_cfg(path, cache_dir, n_validation=100, n_train=400):
    return OmegaConf.create(dict(name="higgs", path=str(path), url="http://127.0.0.1:9/x", n_features=28,
                                 n_validation=n_validation, n_train=n_train, cache_dir=str(cache_dir),
                                 timeout_seconds=5))


def cache_files(cache_dir: Path):
    """The cache's row files, and anything else that is neither one nor a lock (temporary leftovers)."""
    files = sorted(p for p in cache_dir.iterdir() if p.suffix == ".rows")
    other = [p for p in cache_dir.iterdir() if p.suffix not in (".rows", ".lock")]
    return files, other


def header(path: Path) -> dict:
    head = path.read_bytes()[:HEADER_BYTES]
    assert head.startswith(MAGIC)
    return json.loads(head[len(MAGIC):].rstrip())


@pytest.fixture
def block():
    return uci_block(3000, seed=1)


def test_rows_are_memory_mapped_from_one_cache_file_that_records_its_source(tmp_path, block):
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(uci_text(block)))
    splits = load_higgs(data_cfg(path, tmp_path / "cache"))
    np.testing.assert_array_equal(splits.x_train, block[100:500, 1:])
    # a view of the file's pages, not a private copy: parallel jobs share the page cache
    assert isinstance(splits.x_train.base, np.memmap) or isinstance(splits.x_train.base.base, np.memmap)
    (cached,), leftovers = cache_files(tmp_path / "cache")
    assert not leftovers
    record = header(cached)
    assert record["source"] == {"path": str(path), "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
    assert record["rows"] == 500 and record["columns"] == 29 and record["complete"] is False
    assert cached.stat().st_size == HEADER_BYTES + 500 * 29 * 4


def test_a_changed_file_is_ingested_again_and_its_old_rows_removed(tmp_path, block):
    path = tmp_path / "higgs.csv"
    path.write_bytes(uci_text(block))
    cache = tmp_path / "cache"
    before = load_higgs(data_cfg(path, cache)).x_val.copy()
    changed = block.copy()
    changed[:, 1] += 1.0
    path.write_bytes(uci_text(changed))  # same path, new content (and size, modification time)
    after = load_higgs(data_cfg(path, cache))
    np.testing.assert_array_equal(after.x_val, changed[:100, 1:])
    assert not np.array_equal(after.x_val, before)
    (cached,), _ = cache_files(cache)
    assert header(cached)["source"]["size"] == path.stat().st_size


def test_more_rows_ingest_again_once_and_fewer_rows_reuse_the_cache(tmp_path, block, caplog):
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(uci_text(block)))
    cache = tmp_path / "cache"
    load_higgs(data_cfg(path, cache, n_train=400))
    load_higgs(data_cfg(path, cache, n_train=-1))  # every row: the 500-row prefix is superseded
    (cached,), _ = cache_files(cache)
    assert header(cached)["complete"] is True and header(cached)["rows"] == 3000
    mtime = cached.stat().st_mtime_ns
    for n_train in (10, 2900, -1):
        splits = load_higgs(data_cfg(path, cache, n_train=n_train))
        assert len(splits.x_train) == (2900 if n_train == -1 else n_train)
    assert cached.stat().st_mtime_ns == mtime and cache_files(cache)[0] == [cached]


def test_a_damaged_cache_file_is_ignored_and_replaced(tmp_path, block, caplog):
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(uci_text(block)))
    cache = tmp_path / "cache"
    load_higgs(data_cfg(path, cache))
    (cached,), _ = cache_files(cache)
    with open(cached, "r+b") as f:  # cut short, as a full disk or a killed copy would leave it
        f.truncate(HEADER_BYTES + 1000)
    splits = load_higgs(data_cfg(path, cache))
    np.testing.assert_array_equal(splits.x_train, block[100:500, 1:])
    assert "ignoring unreadable cache file" in caplog.text
    assert cached.stat().st_size == HEADER_BYTES + 500 * 29 * 4


def test_a_bad_line_leaves_no_cache_and_no_temporary_file(tmp_path, block):
    text = uci_text(block).decode().splitlines()
    text[2500] = text[2500].replace(",", ",abc,", 1)  # far past the first of pyarrow's blocks
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))
    with pytest.raises(DataError, match=r"higgs\.csv\.gz line 2501: expected 29 comma-separated values"):
        load_higgs(data_cfg(path, tmp_path / "cache", n_train=-1))
    assert cache_files(tmp_path / "cache") == ([], [])


def test_odd_but_valid_text_gives_the_line_parsers_rows(tmp_path, block):
    """Spaces around values and a line of spaces: pyarrow declines, the line parser reads on; the same rows."""
    lines = uci_text(block).decode().splitlines()
    lines[1800] = " " + lines[1800].replace(",", " , ")
    lines.insert(2000, "   ")
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(lines) + "\n")
    splits = load_higgs(data_cfg(path, tmp_path / "cache", n_train=-1))
    np.testing.assert_array_equal(splits.x_train, block[100:, 1:])
    np.testing.assert_array_equal(splits.y_train, block[100:, :1])


def test_an_unwritable_cache_dir_warns_and_still_trains(tmp_path, block, caplog):
    path = tmp_path / "higgs.csv"
    path.write_bytes(uci_text(block))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    splits = load_higgs(data_cfg(path, not_a_dir / "cache"))
    np.testing.assert_array_equal(splits.x_train, block[100:500, 1:])
    assert "data.cache_dir: cannot cache the rows" in caplog.text


def test_n_train_all_takes_every_row_after_validation(tmp_path, block):
    path = tmp_path / "higgs.csv"
    path.write_bytes(uci_text(block))
    splits = load_higgs(data_cfg(path, tmp_path / "cache", n_validation=1000, n_train=-1))
    assert len(splits.x_train) == 2000
    with pytest.raises(DataError, match=r"has 3000 rows, none left for training after data\.n_validation=3000"):
        load_higgs(data_cfg(path, tmp_path / "cache", n_validation=3000, n_train=-1))


def _ingest(source: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "src.data", str(source), "--cache-dir", str(cache), "--quiet", *extra],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_processes_ingesting_one_source_at_once_parse_it_once(tmp_path):
    source = tmp_path / "higgs.csv.gz"
    block = write_uci_gzip(source, 300_000, block_rows=5000)
    cache = tmp_path / "cache"
    procs = [_ingest(source, cache) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    last_lines = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    (cached,), leftovers = cache_files(cache)
    assert not leftovers
    assert last_lines[0].startswith("300,000 rows already cached in ")
    assert last_lines[1].startswith("300,000 rows in ") and last_lines[1].endswith(f"rows/s) -> {cached}")
    rows = np.memmap(cached, dtype=np.float32, mode="r", offset=HEADER_BYTES, shape=(300_000, 29))
    np.testing.assert_array_equal(rows[-5000:], block)


def test_the_ingest_command_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,f1\n")
    proc = _ingest(bad, tmp_path / "cache", "--rows", "10")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip() == f"error: {bad} line 1: expected 29 comma-separated values (label + data.n_features=28), got 2"
    assert not (tmp_path / "cache").exists() or cache_files(tmp_path / "cache") == ([], [])


def test_a_file_rewritten_during_its_ingest_is_not_cached(tmp_path, block, monkeypatch):
    """A copy still being written when a job starts: the job stops in one line, and no cache claims that content."""
    from src.data import cache as datacache

    path = tmp_path / "higgs.csv"
    path.write_bytes(uci_text(block))
    real_blocks = datacache.parse_blocks

    def parse_then_append(*args, **kwargs):
        yield from real_blocks(*args, **kwargs)
        with open(path, "ab") as f:  # the copy goes on after the rows were read
            f.write(uci_text(block[:10]))

    monkeypatch.setattr(datacache, "parse_blocks", parse_then_append)
    with pytest.raises(DataError, match=r"higgs\.csv changed while it was being read"):
        load_higgs(data_cfg(path, tmp_path / "cache", n_train=-1))
    assert cache_files(tmp_path / "cache") == ([], [])


def test_a_killed_ingest_leaves_nothing_that_is_read_and_its_leftover_is_cleared(tmp_path, block):
    path = tmp_path / "higgs.csv"
    path.write_bytes(uci_text(block))
    cache = tmp_path / "cache"
    load_higgs(data_cfg(path, cache, n_train=100))
    (first,), _ = cache_files(cache)
    leftover = cache / f".{first.name.rsplit('-', 1)[0]}-x1y2z3.rows.tmp"  # as a SIGKILL mid-write leaves it
    leftover.write_bytes(b"\0" * 5000)
    splits = load_higgs(data_cfg(path, cache, n_train=-1))  # the next ingest of that source clears it
    np.testing.assert_array_equal(splits.x_train, block[100:, 1:])
    assert not leftover.exists() and cache_files(cache)[1] == []


def test_a_warm_cache_of_other_columns_is_not_used_for_a_config_that_asks_fewer(tmp_path):
    """data.n_features=27 on a cache of 28 once fed a model built for 27 with 28 columns (a multi-line Keras error)."""
    path = tmp_path / "rows.csv.gz"
    write_uci_gzip(path, 600)
    assert load_higgs(data_cfg(path, tmp_path / "cache")).x_train.shape[1] == 28  # warm
    fewer = data_cfg(path, tmp_path / "cache")
    fewer.n_features = 27
    with pytest.raises(DataError, match=r"line 1: expected 28 comma-separated values \(label \+ data.n_features=27\), "
                                        r"got 29$"):
        load_higgs(fewer)
    assert len(cache_files(tmp_path / "cache")[0]) == 1  # the 28-column cache stays whole; nothing half-written


def _src_data(path: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    return run_module("src.data", [str(path), "--cache-dir", str(cache_dir), "--quiet"], cwd=cache_dir.parent,
                      timeout=120)


def test_a_cache_file_altered_in_place_is_refused_in_one_line_naming_it(tmp_path, block):
    """Labels flipped in the cached rows, same size and header: the next open refuses the file, naming it."""
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(uci_text(block)))
    cache_dir = tmp_path / "cache"
    load_higgs(data_cfg(path, cache_dir, n_train=-1))  # every row cached, as `python -m src.data` asks
    (cached,), _ = cache_files(cache_dir)
    rows = np.memmap(cached, dtype=np.float32, mode="r+", offset=HEADER_BYTES, shape=(3000, 29))
    rows[:, 0] = 1 - rows[:, 0]  # every label flipped
    rows.flush()
    del rows
    proc = _src_data(path, cache_dir)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: cache file {cached}: its rows do not match its header's digest (altered since it was written); "
        f"delete it and run again to rebuild it from {path}"
    ]
    cached.unlink()  # what the line says to do
    np.testing.assert_array_equal(load_higgs(data_cfg(path, cache_dir)).y_train[:, 0], block[100:500, 0])


def test_a_cache_file_of_the_older_format_is_rebuilt_and_replaced(tmp_path, block):
    """A v1 file (no digest of its rows) is never trusted: its source is ingested again and the old file removed."""
    path = tmp_path / "higgs.csv.gz"
    path.write_bytes(gzip.compress(uci_text(block)))
    cache_dir = tmp_path / "cache"
    load_higgs(data_cfg(path, cache_dir))
    (cached,), _ = cache_files(cache_dir)
    record = header(cached)
    del record["digest"]
    raw = bytearray(cached.read_bytes())
    raw[:HEADER_BYTES] = (LEGACY_MAGIC + json.dumps(record).encode()).ljust(HEADER_BYTES, b" ")
    raw[HEADER_BYTES:HEADER_BYTES + 4] = np.float32(7).tobytes()  # a v1 file's rows are not checked: never used
    legacy = cache_dir / cached.name.replace("-500.rows", "-400.rows")
    cached.unlink()
    legacy.write_bytes(raw)
    splits = load_higgs(data_cfg(path, cache_dir))
    np.testing.assert_array_equal(splits.y_val[:, 0], block[:100, 0])
    (rebuilt,), leftovers = cache_files(cache_dir)
    assert not leftovers and rebuilt != legacy and "digest" in header(rebuilt)
