"""The generic JSON record helpers shared by the VQA-v2 reader and the scorer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lrcn.json_records import (
    check_record,
    describe_record,
    is_int,
    json_kind,
    load_json,
    read_record_list,
    record_list,
)
from lrcn.errors import LrcnError

REQUIRED = {"question_id": int, "text": str}


def _file(tmp_path: Path, content: str | bytes, name: str = "data.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "message"), [
    ("", "the things file is empty"),
    ('{"a": [1, 2', "not valid JSON"),
    (b'["\xff"]', "not a UTF-8 JSON file"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_load_json_errors_name_the_file(tmp_path: Path, content: str | bytes,
                                        message: str) -> None:
    path = _file(tmp_path, content)
    with pytest.raises(LrcnError, match=message) as info:
        load_json(path, "things")
    assert str(path) in str(info.value)


def test_load_json_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="things file not found") as info:
        load_json(tmp_path / "absent.json", "things")
    assert "absent.json" in str(info.value)
    with pytest.raises(LrcnError, match="found a directory"):
        load_json(tmp_path, "things")
    assert load_json(_file(tmp_path, '{"a": [1]}')) == {"a": [1]}


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"items": []}, None, "must be a JSON list of objects, got an object"),
    ([], "items", "must be a JSON object with key 'items', got a list"),
    ({"other": []}, "items", "missing key 'items' at the top level"),
    ({"items": {}}, "items", "'items' must be a list, got an object"),
])
def test_record_list_errors(tmp_path: Path, data: Any, key: str | None, message: str) -> None:
    path = tmp_path / "f.json"
    with pytest.raises(LrcnError, match=message) as info:
        record_list(path, data, key, "things")
    assert str(path) in str(info.value)


def test_read_record_list(tmp_path: Path) -> None:
    path = _file(tmp_path, json.dumps({"items": [{"question_id": 1}]}))
    assert read_record_list(path, "items", "things") == [{"question_id": 1}]
    assert read_record_list(_file(tmp_path, "[3]", "l.json"), None, "things") == [3]


def test_describe_record() -> None:
    assert describe_record({"question_id": 5}, "items", 2) == "items[2] (question_id 5)"
    assert describe_record({"x": 1}, None, 0) == "record 0"
    assert describe_record("text", "items", 1) == "items[1]"


@pytest.mark.parametrize(("entry", "message"), [
    ("x", "items\\[0\\]: expected an object, got a string 'x'"),
    ({"text": "a"}, "items\\[0\\]: missing key 'question_id'"),
    ({"question_id": True, "text": "a"},
     "items\\[0\\] \\(question_id True\\): 'question_id' must be an integer, got a boolean"),
    ({"question_id": 1.0, "text": "a"}, "'question_id' must be an integer, got a number"),
    ({"question_id": 3, "text": None},
     "items\\[0\\] \\(question_id 3\\): 'text' must be a string, got null"),
])
def test_check_record_errors(tmp_path: Path, entry: Any, message: str) -> None:
    path = tmp_path / "f.json"
    with pytest.raises(LrcnError, match=message) as info:
        check_record(path, entry, describe_record(entry, "items", 0), REQUIRED)
    assert str(path) in str(info.value)


def test_check_record_ok_and_kinds(tmp_path: Path) -> None:
    entry = {"question_id": 1, "text": "a", "extra": [1]}
    assert check_record(tmp_path / "f.json", entry, "items[0]", REQUIRED) is entry
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert [json_kind(v) for v in (None, False, 1, 1.5, "s", [], {})] == [
        "null", "a boolean", "an integer", "a number", "a string", "a list", "an object"]
