"""Reading JSON files of records (VQA questions, annotations, results), checked as read.

Every failure is an :class:`~lrcn.errors.LrcnError` whose message names the file, the
record (``annotations[3] (question_id 42)``, or ``record 3`` in a top-level list) and what
is wrong with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lrcn.errors import LrcnError

__all__ = [
    "check_record",
    "describe_record",
    "find_json",
    "is_int",
    "iter_unique_records",
    "json_kind",
    "load_json",
    "read_record_list",
    "record_list",
    "record_name",
    "short_repr",
]

_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a number", str: "a string",
    list: "a list", dict: "an object",
}


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(value: Any) -> str:
    """A JSON-ish name for the type of a parsed value, for messages."""
    if value is None:
        return "null"
    for kind in (bool, int, float, str, list, dict):  # bool before int: True is an int
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return type(value).__name__


def is_int(value: Any) -> bool:
    """Whether a parsed value is a JSON integer (``true``/``false`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def find_json(root: Path, filename: str, folders: Sequence[str], what: str = "") -> Path:
    """``root/<folder>/filename`` for the first of `folders` holding it ("" is root itself)."""
    for sub in folders:
        path = root / sub / filename
        if path.is_file():
            return path
    places = ", ".join(str(root / sub) for sub in folders)
    raise LrcnError(f"{what}{filename} not found; looked in {places}")


def load_json(path: str | os.PathLike[str], what: str = "JSON") -> Any:
    """Parse a JSON file, turning every way of failing into an LrcnError naming it.

    ``what`` names the kind of file in messages (``"annotation"`` -> "annotation file").
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LrcnError(f"{p}: {what} file not found") from None
    except IsADirectoryError:
        raise LrcnError(f"{p}: expected a {what} file, found a directory") from None
    except OSError as exc:
        raise LrcnError(f"{p}: cannot read the {what} file: {exc.strerror or exc}") from None
    if not raw.strip():
        raise LrcnError(f"{p}: the {what} file is empty")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LrcnError(
            f"{p}: not valid JSON (truncated or corrupt?): {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise LrcnError(f"{p}: not a UTF-8 JSON file: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise LrcnError(f"{p}: not valid JSON: {exc}") from None
    except RecursionError:
        raise LrcnError(f"{p}: JSON nested too deeply to be a {what} file") from None


def record_list(path: str | os.PathLike[str], data: Any, key: str | None, what: str) -> list[Any]:
    """The list of records of a parsed file: ``data[key]``, or ``data`` itself for None."""
    p = Path(path)
    if key is None:
        if not isinstance(data, list):
            raise LrcnError(
                f"{p}: the {what} file must be a JSON list of objects, got {json_kind(data)}"
            )
        return data
    if not isinstance(data, dict):
        raise LrcnError(
            f"{p}: the {what} file must be a JSON object with key {key!r}, got {json_kind(data)}"
        )
    if key not in data:
        raise LrcnError(
            f"{p}: missing key {key!r} at the top level of the {what} file "
            f"(keys: {sorted(data)[:8]})"
        )
    records = data[key]
    if not isinstance(records, list):
        raise LrcnError(f"{p}: {key!r} must be a list, got {json_kind(records)}")
    return records


def read_record_list(path: str | os.PathLike[str], key: str | None, what: str) -> list[Any]:
    """Load a JSON file and return its list of records (see :func:`record_list`)."""
    return record_list(path, load_json(path, what), key, what)


def record_name(key: str | None, index: int) -> str:
    """``key[index]`` for records under a key, ``record index`` in a top-level list."""
    return f"record {index}" if key is None else f"{key}[{index}]"


def describe_record(entry: Any, key: str | None, index: int, id_key: str = "question_id") -> str:
    """The record's name plus its id (``id_key``) when it has one, for messages."""
    name = record_name(key, index)
    if isinstance(entry, dict) and entry.get(id_key) is not None:
        name += f" ({id_key} {short_repr(entry[id_key])})"
    return name


def check_record(
    path: str | os.PathLike[str], entry: Any, where: str, required: Mapping[str, type]
) -> dict[str, Any]:
    """Check that ``entry`` is an object holding every required key with the required type.

    ``bool`` never passes for ``int``. ``where`` names the record in messages (see
    :func:`describe_record`). Returns the entry.
    """
    p = Path(path)
    if not isinstance(entry, dict):
        raise LrcnError(
            f"{p}: {where}: expected an object, got {json_kind(entry)} {short_repr(entry)}"
        )
    for key, kind in required.items():
        if key not in entry:
            raise LrcnError(f"{p}: {where}: missing key {key!r} (keys: {sorted(entry)[:8]})")
        value = entry[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise LrcnError(
                f"{p}: {where}: {key!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}, "
                f"got {json_kind(value)} {short_repr(value)}"
            )
    return entry


def iter_unique_records(
    path: str | os.PathLike[str], key: str | None, what: str, required: Mapping[str, type],
    id_key: str = "question_id",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Load a file and yield (name, record) for each record, checked for ``required`` keys
    and for an id (``id_key``, which ``required`` must include) not seen before."""
    first_index: dict[Any, int] = {}
    for i, entry in enumerate(read_record_list(path, key, what)):
        where = describe_record(entry, key, i, id_key)
        check_record(path, entry, where, required)
        qid = entry[id_key]
        if qid in first_index:
            raise LrcnError(
                f"{Path(path)}: {where}: duplicate {id_key} {qid} "
                f"(first at {record_name(key, first_index[qid])})"
            )
        first_index[qid] = i
        yield where, entry
