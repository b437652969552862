"""data=csv: a CSV file with a header row (plain or gzip), or a Parquet file; one column the label, others features.

Read with pyarrow once, into the same shared binary cache as HIGGS (label first, then the features, float32), so
every later job maps the rows instead of parsing the file again.
"""

from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from src.core.errors import ConfigError, DataError, first_line
from src.data.splits import Splits

PARQUET_SUFFIXES = (".parquet", ".pq")


def load_table(path: Optional[str], label: Optional[str], features: Optional[List[str]], n_validation: Optional[int],
               validation_fraction: Optional[float], cache_dir: str, progress: bool = False) -> Splits:
    """The first `n_validation` rows (or the first `validation_fraction` of them) validate, the rest train."""
    from src.data.cache import Source, cached_rows
    from src.data.higgs import data_path, local_source

    if path is None:
        raise ConfigError("data.path: required with data=csv (a CSV file with a header row, or a Parquet file)")
    if label is None:
        raise ConfigError("data.label: required with data=csv (the label's column)")
    file = data_path(path)
    local = local_source(file)  # data.path's own one-line errors: no such file, a directory, no permission
    columns = _column_names(file)
    if label not in columns:
        raise DataError(f"data.label={label}: no such column in {file} (columns: {', '.join(columns)})")
    chosen = list(features) if features else [c for c in columns if c != label]
    missing = [c for c in chosen if c not in columns]
    if missing or not chosen or label in chosen:
        why = f"no column {', '.join(missing)}" if missing else "the label is not a feature" if label in chosen else \
            "no feature column left"
        raise DataError(f"data.features: {why} in {file} (columns: {', '.join(columns)})")

    def identity_of(stat_identity: dict) -> dict:
        return {**stat_identity, "label": label, "features": chosen}

    source = Source(str(file), identity_of(local.identity), local.open_raw, local.size, threads=False,
                    identity_now=lambda: identity_of(local.identity_now()), prefix="table",
                    parse=lambda open_raw, n_rows: _parse(file, label, chosen))
    rows = cached_rows(source, None, len(chosen), Path(cache_dir).expanduser(), progress=progress).rows
    n_val = _validation_rows(len(rows), n_validation, validation_fraction)
    return Splits(x_val=rows[:n_val, 1:], y_val=rows[:n_val, :1], x_train=rows[n_val:, 1:], y_train=rows[n_val:, :1],
                  source=str(file), name="csv")


def _validation_rows(n_rows: int, n_validation: Optional[int], validation_fraction: Optional[float]) -> int:
    """data.n_validation if set, else data.validation_fraction of the rows; at least one left for each split."""
    if n_validation is None:
        if validation_fraction is None or not 0 < validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction={validation_fraction}: must be in (0, 1) when "
                              "data.n_validation is null")
        n_validation = max(1, round(n_rows * validation_fraction))
    if not 1 <= n_validation < n_rows:
        raise ConfigError(f"data.n_validation={n_validation}: the file has {n_rows} rows; it must be at least 1 and "
                          "leave rows to train on")
    return n_validation


def _column_names(file: Path) -> List[str]:
    """The table's columns, from the Parquet schema or the CSV's header row, without reading the rows."""
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if file.suffix.lower() in PARQUET_SUFFIXES:
            return list(pyarrow.parquet.read_schema(file).names)
        with pyarrow.csv.open_csv(file) as reader:  # the header and the first block only
            return list(reader.schema.names)
    except Exception as exc:  # pyarrow's ArrowInvalid and the like: not a table it can read
        raise DataError(f"data.path: {file}: not a CSV file with a header row, or a Parquet file "
                        f"({first_line(exc)})") from None


def _parse(file: Path, label: str, features: List[str]) -> Iterator[np.ndarray]:
    """The label and feature columns as one float32 block (label first); DataError naming the column and the line
    for a column that is not numeric and for a missing, NaN or infinite value."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv
    import pyarrow.parquet

    wanted = [label, *features]
    parquet = file.suffix.lower() in PARQUET_SUFFIXES
    try:
        if parquet:
            table = pyarrow.parquet.read_table(file, columns=wanted)
        else:
            table = pyarrow.csv.read_csv(file, convert_options=pyarrow.csv.ConvertOptions(include_columns=wanted))
    except Exception as exc:
        raise DataError(f"{file}: cannot be read as a table ({first_line(exc)})") from None

    def where(row: int) -> str:  # a CSV's line (its header is line 1), a Parquet file's row
        return f"row {row}" if parquet else f"line {row + 2}"

    block = np.empty((table.num_rows, len(wanted)), dtype=np.float32)
    for i, name in enumerate(wanted):
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)):
            raise DataError(f"{file}: column {name} is not numeric ({column.type}); convert it, or leave it out with "
                            "data.features=[...]")
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise DataError(f"{file} {where(row)}: column {name} has no value")
        with np.errstate(over="ignore"):  # beyond float32 is inf, named below
            block[:, i] = column.to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isfinite(block[:, i])
        if bad.any():
            raise DataError(f"{file} {where(int(np.argmax(bad)))}: column {name} holds NaN or an infinite value")
    yield block
