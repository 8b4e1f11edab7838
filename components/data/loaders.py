"""Load user data into validated canonical records.

Sources:
  * a local file: .jsonl (one object per line), .json (an array of objects), .parquet, .csv
  * a local directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
    (`split` picks the split of a DatasetDict)
  * `hf:<name>`: anything `datasets.load_dataset(name, config, split=split, revision=revision)`
    accepts, e.g. `hf:openai/gsm8k` with config="main" (a Hub name, or a local data directory)

Row numbers in errors are 1-based: the physical line for jsonl, the array element for
json, the data row (header excluded) for csv, parquet and datasets. Every error is one
`DataError` whose message starts with the source, then the row and the column, e.g.
    data/x.jsonl: row 7: column 'prompt': expected a non-empty string, got int
All rows are validated before anything is returned; the first bad row raises.

CSV cells are read as strings (empty cell -> None); list-valued fields (messages,
responses, ...) may be written as JSON in a cell. `split`, `config` and `revision` only apply
to datasets (`revision`: to hub ones). `column_map` renames input columns before validation:
{"query": "prompt"}.
"""
from __future__ import annotations

import json
import os
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from components.data.schemas import SCHEMAS, FieldError, Schema

__all__ = ["DataError", "SCHEMAS", "detect_format", "load_records"]

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
HF_PREFIX = "hf:"
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")   # written by save_to_disk
BATCH_ROWS = 10_000

NumberedRows = Iterator[tuple[int, Any]]      # (1-based row number, raw row)


class DataError(ValueError):
    """One clear message naming the source file, the 1-based row (line for jsonl, data row
    for csv/parquet), and the column."""


def load_records(source: str | os.PathLike, schema: str, *, split: str = "train",
                 config: str | None = None, revision: str | None = None, limit: int | None = None,
                 column_map: dict[str, str] | None = None) -> list[dict]:
    """Load and validate rows into the canonical form of `schema`.

    Extra columns are kept under their own names; columns consumed by the schema (e.g.
    `question`, `conversations`, `ranks`) are not. `limit` reads only the first rows.
    """
    spec = _schema(schema)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    fmt = detect_format(source)
    label = _label(source, fmt, split, config)
    with closing(READERS[fmt](os.fspath(source), label, split, config, revision)) as rows:
        records = [_record(label, n, row, spec, column_map or {})
                   for n, row in islice(rows, limit)]
    if not records:
        raise DataError(f"{label}: no rows")
    return records


def detect_format(path: str | os.PathLike) -> str:
    """One of 'jsonl', 'json', 'parquet', 'csv', 'saved_dataset' (a save_to_disk
    directory) or 'hf' (an `hf:` name); raises DataError for anything else."""
    text = os.fspath(path)
    if text.startswith(HF_PREFIX):
        return "hf"
    p = Path(text)
    if p.is_dir():
        if any((p / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            return "saved_dataset"
        raise DataError(f"{text}: is a directory but not a dataset written by save_to_disk "
                        f"(no {' or '.join(SAVED_DATASET_MARKERS)})")
    if not p.is_file():
        hint = f" (for a Hugging Face dataset write '{HF_PREFIX}{text}')" if not p.suffix else ""
        raise DataError(f"{text}: file not found{hint}")
    fmt = EXTENSIONS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{text}: unsupported file extension '{p.suffix}'; supported: "
                        f"{', '.join(EXTENSIONS)}, a save_to_disk directory, or '{HF_PREFIX}org/name'")
    return fmt


# --- validation ------------------------------------------------------------------------

def _schema(name: str) -> Schema:
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r}; expected one of {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def _record(label: str, n: int, row: Any, spec: Schema, column_map: dict[str, str]) -> dict:
    """Canonical keys first, then every column the matched form did not consume."""
    where = f"{label}: row {n}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    try:
        row = _rename(row, column_map)
        form = spec.match(row)
        if form is None:
            raise _missing_column(row, spec)
        record = spec.normalise(row, form)
    except FieldError as e:
        raise DataError(f"{where}: column {_column_name(e.column, column_map)}: {e.problem}") from None
    record.update((k, v) for k, v in row.items() if k not in form and k not in record)
    return record


def _rename(row: dict, column_map: dict[str, str]) -> dict:
    for old, new in column_map.items():
        if old not in row:
            raise FieldError(old, f"not found (column_map renames it to '{new}'); "
                                  f"columns present: {sorted(row)}")
        if new in row and new != old:
            raise FieldError(old, f"column_map renames it to '{new}', "
                                  f"but the data already has a column named '{new}'")
    return {column_map.get(k, k): v for k, v in row.items()}


def _missing_column(row: dict, spec: Schema) -> FieldError:
    closest = spec.closest(row)
    missing = next(c for c in closest if c not in row)
    return FieldError(missing, f"missing required column; columns present: {sorted(row)}; "
                               f"schema '{spec.name}' expects columns {spec.describe()} "
                               f"(rename columns with the source's columns: {{from: to}})")


def _column_name(column: str, column_map: dict[str, str]) -> str:
    original = {new: old for old, new in column_map.items()}.get(column)
    return f"'{original}' (mapped to '{column}')" if original else f"'{column}'"


def _label(source: str | os.PathLike, fmt: str, split: str, config: str | None) -> str:
    if fmt != "hf":
        return os.fspath(source)
    config_part = f"config '{config}', " if config else ""
    return f"{os.fspath(source)} ({config_part}split '{split}')"


# --- readers: (path, label, split, config, revision) -> (row number, raw row) ------------------------

def _read_jsonl(path: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    _require_content(path, label)
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig")
                if line.strip():
                    yield n, json.loads(line)
            except UnicodeDecodeError as e:
                raise DataError(f"{label}: row {n}: not valid UTF-8: {e.reason}") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{label}: row {n}: invalid JSON at column {e.colno}: {e.msg}") from None


def _read_json(path: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    _require_content(path, label)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: not valid UTF-8: {e.reason}") from None
    except json.JSONDecodeError as e:
        hint = " (one object per line? name the file .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{label}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}") from None
    if not isinstance(data, list):
        raise DataError(f"{label}: expected a JSON array of objects, got {type(data).__name__}")
    yield from enumerate(data, 1)


def _read_csv(path: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    import pandas as pd

    _require_content(path, label)
    n = 0
    try:
        chunks = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                             chunksize=BATCH_ROWS)
        for chunk in chunks:
            for row in chunk.astype(object).where(chunk.notna(), None).to_dict("records"):
                n += 1
                yield n, row
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{label}: invalid CSV: {e}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{label}: no columns (empty CSV)") from None


def _read_parquet(path: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        rows = (row for batch in batches for row in batch.to_pylist())
        yield from enumerate(rows, 1)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{label}: not a readable parquet file: {e}") from None


def _read_saved_dataset(path: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    import datasets

    try:
        data = datasets.load_from_disk(path)
    except Exception as e:  # datasets raises many types; report any of them as a DataError
        raise DataError(f"{label}: could not load dataset: {type(e).__name__}: {e}") from e
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{label}: no split '{split}'; available: {', '.join(data)}")
        data = data[split]
    yield from enumerate(data, 1)


def _read_hf(source: str, label: str, split: str, config: str | None, revision: str | None) -> NumberedRows:
    import datasets

    name = source[len(HF_PREFIX):]
    if not name:
        raise DataError(f"{label}: missing dataset name after '{HF_PREFIX}'")
    try:
        data = datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as e:  # hub, network, config and split errors all surface here
        raise DataError(f"{label}: could not load dataset: {type(e).__name__}: {e}") from e
    yield from enumerate(data, 1)


def _require_content(path: str, label: str) -> None:
    if os.path.getsize(path) == 0:
        raise DataError(f"{label}: file is empty")


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
           "parquet": _read_parquet, "saved_dataset": _read_saved_dataset, "hf": _read_hf}
