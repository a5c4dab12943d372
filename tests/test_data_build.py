"""``lrcn data build|list`` and the first build a ``load_split`` triggers, for every
generated dataset of the registry."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_one_line_error, run_cli
from lrcn.cli.data import add_data_parser, print_data, run_data
from lrcn.data import generated_dataset, generated_names, load_split
from lrcn.data.generators.generated import GeneratedDataset
from lrcn.errors import LrcnError


def data_parser() -> argparse.ArgumentParser:
    """``lrcn`` with only the ``data`` command, as ``lrcn.cli.parser`` adds it."""
    parser = argparse.ArgumentParser(prog="lrcn")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def data(*argv: Any) -> dict[str, Any]:
    """Run ``lrcn data ARGV`` through the parser and ``run_data``; the summary, JSON-checked."""
    args = data_parser().parse_args(["data", *(str(a) for a in argv)])
    summary = run_data(args)
    assert json.loads(json.dumps(summary)) == summary
    return summary


def tiny(dataset: GeneratedDataset) -> dict[str, int]:
    return {split: 2 for split in dataset.splits}


@pytest.fixture(params=generated_names())
def dataset(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> GeneratedDataset:
    """Each generated dataset, with tiny default sizes and its data home under tmp_path."""
    dataset = generated_dataset(request.param)
    monkeypatch.setattr(dataset, "default_sizes", tiny(dataset))
    monkeypatch.setenv("LRCN_DATA_HOME", str(tmp_path / "home"))
    return dataset


def stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_build_then_reuse(dataset: GeneratedDataset, tmp_path: Path) -> None:
    root = tmp_path / "data" / dataset.name
    first = data("build", dataset.name, "--root", root)
    assert first["dataset"] == dataset.name and first["root"] == str(root)
    assert first["splits"] == tiny(dataset) and first["seed"] == dataset.default_seed
    assert first["version"] == dataset.version and first["already_built"] is False
    assert dataset.is_complete(root) and first["seconds"] >= 0
    for split in dataset.splits:
        assert load_split(dataset.name, str(root), split).records
    before = stamps(root)
    again = data("build", dataset.name, "--root", root)
    assert again["already_built"] is True and again["splits"] == tiny(dataset)
    assert stamps(root) == before  # reused, not rebuilt
    assert sorted(p.name for p in root.parent.iterdir()) == [dataset.name]


def test_seed_and_force(dataset: GeneratedDataset, tmp_path: Path) -> None:
    root = tmp_path / dataset.name
    assert data("build", dataset.name, "--root", root, "--seed", 3)["seed"] == 3
    with pytest.raises(LrcnError, match=f"already holds a {dataset.title} build with seed 3; "
                                        "add --force to rebuild it with seed 4"):
        data("build", dataset.name, "--root", root, "--seed", 4)
    assert data("build", dataset.name, "--root", root, "--seed", 3)["already_built"] is True
    rebuilt = data("build", dataset.name, "--root", root, "--seed", 4, "--force")
    assert rebuilt["already_built"] is False and rebuilt["seed"] == 4
    assert dataset.meta(root)["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [dataset.name]  # no old or tmp folder


def test_default_folder_and_list(dataset: GeneratedDataset, tmp_path: Path) -> None:
    listed = {d["dataset"]: d for d in data("list")["datasets"]}
    assert sorted(listed) == generated_names()
    entry = listed[dataset.name]
    assert entry["root"] == str(tmp_path / "home" / f"{dataset.name}-v{dataset.version}")
    assert entry["built"] is False and entry["default_sizes"] == tiny(dataset)
    assert data("build", dataset.name)["root"] == entry["root"]
    after = data("list")
    assert after["data_home"] == str(tmp_path / "home")
    assert {d["dataset"]: d["built"] for d in after["datasets"]}[dataset.name] is True


def test_build_refuses_foreign_files(dataset: GeneratedDataset, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    for force in ((), ("--force",)):
        with pytest.raises(LrcnError, match=r"and also other files \(notes\.txt\)"):
            data("build", dataset.name, "--root", tmp_path / "mine", *force)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_progress_counts_every_item(dataset: GeneratedDataset, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[int] = []
    real = dataset.generate

    def counting(out: Path, seed: int, sizes: dict[str, int], *, progress: Any) -> Any:
        return real(out, seed, sizes, progress=lambda n: (told.append(n), progress(n)))

    monkeypatch.setattr(dataset, "generate", counting)
    dataset.build(tmp_path / "ds", 0, {split: 3 for split in dataset.splits})
    assert sum(told) == 3 * len(dataset.splits)


def test_first_load_says_where_it_builds(dataset: GeneratedDataset, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lrcn")
    load_split(dataset.name, None, dataset.splits[0])
    root = tmp_path / "home" / f"{dataset.name}-v{dataset.version}"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and "first use" in r.getMessage()]
    assert len(said) == 1, caplog.text
    for fragment in (str(root), "--data-root", "LRCN_DATA_HOME", f"lrcn data build {dataset.name}"):
        assert fragment in said[0], (fragment, said[0])
    caplog.clear()
    load_split(dataset.name, None, dataset.splits[-1])  # built: nothing more to say
    assert "first use" not in caplog.text


@pytest.mark.parametrize(("name", "fragment"), [
    ("nope", "unknown dataset 'nope'"),
    ("vqa2", "dataset 'vqa2' is read from its published files, not generated"),
])
def test_bad_names(name: str, fragment: str) -> None:
    with pytest.raises(LrcnError) as info:
        data("build", name)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.endswith(f"generated datasets: {', '.join(generated_names())}")


def test_print_data(dataset: GeneratedDataset, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    print_data(data("build", dataset.name, "--root", tmp_path / "ds"))
    sizes = ", ".join(f"{split} 2" for split in dataset.splits)
    assert capsys.readouterr().out == (f"{dataset.name} built in {tmp_path / 'ds'} (seed "
                                       f"{dataset.default_seed}; {dataset.unit}: {sizes})\n")
    print_data(data("list"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"data home: {tmp_path / 'home'} ($LRCN_DATA_HOME)"
    assert len(lines) == 1 + len(generated_names())


# --- through the lrcn command (lrcn.cli.parser wires `data` in) ----------------------------


def test_lrcn_data_build(dataset: GeneratedDataset, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ds"
    result = run_cli(capsys, "data", "build", dataset.name, "--root", root, "--json")
    assert result.code == 0, result.err
    assert result.json["already_built"] is False and result.json["root"] == str(root)
    again = run_cli(capsys, "data", "build", dataset.name, "--root", root, "--json")
    assert again.code == 0 and again.json["already_built"] is True
    human = run_cli(capsys, "data", "build", dataset.name, "--root", root)
    assert human.code == 0 and f"{dataset.name} already built in {root}" in human.out


def test_lrcn_data_build_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "data", "build", "nope")
    assert_one_line_error(result, "data", "unknown dataset 'nope'",
                          f"generated datasets: {', '.join(generated_names())}")
