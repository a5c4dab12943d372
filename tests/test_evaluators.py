"""Evaluators (reset / process / evaluate / write_results): the official numbers of each
metric, gathering the shares of several processes, the submission files, the registry."""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lrcn.data.records import VQARecord
from lrcn.data.registry import dataset_metric, dataset_names
from lrcn.data.vizwiz import read_vizwiz
from lrcn.errors import LrcnError
from lrcn.evaluation import (
    EVALUATORS,
    DatasetEvaluator,
    Gather,
    VizWizEvaluator,
    VQAEvaluator,
    build_evaluator,
)
from lrcn.evaluation.score import read_results
from lrcn.evaluation.vizwiz import read_vizwiz_results, score_vizwiz_files

DATA = Path(__file__).parent / "data"
TOL = 1e-6


# --------------------------------------------------------------------------- helpers


def _vqa_records() -> list[VQARecord]:
    """The records of the VQA-v2 conformance annotations, as the VQA-v2 reader makes them."""
    anns = json.loads((DATA / "vqa_eval" / "annotations.json").read_text())["annotations"]
    return [VQARecord(question_id=a["question_id"], image_key=f"{a['image_id']}.jpg",
                      question="q?", answers=tuple(x["answer"] for x in a["answers"]),
                      answer_type=a["answer_type"], question_type=a["question_type"])
            for a in anns]


def _vqa_predictions(records: list[VQARecord]) -> tuple[list[str], None]:
    predicted = read_results(DATA / "vqa_eval" / "results.json")
    return [predicted[r.question_id] for r in records], None


@pytest.fixture(scope="module")
def vizwiz_records(tmp_path_factory: pytest.TempPathFactory) -> list[VQARecord]:
    """The records of the VizWiz conformance annotations, read by the VizWiz reader."""
    root = tmp_path_factory.mktemp("vizwiz")
    (root / "Annotations").mkdir()
    shutil.copy(DATA / "vizwiz_eval" / "annotations.json", root / "Annotations" / "val.json")
    return read_vizwiz(root, "val").records


def _vizwiz_predictions(records: list[VQARecord]) -> tuple[list[str], list[float]]:
    by_image = {r["image"]: r for r in read_vizwiz_results(DATA / "vizwiz_eval" / "results.json")}
    return ([by_image[r.question_id]["answer"] for r in records],
            [by_image[r.question_id]["answerable"] for r in records])


def _record(qid: int | str, answer_type: str | None = "other",
            question_type: str | None = None, answerable: bool | None = None) -> VQARecord:
    return VQARecord(question_id=qid, image_key="a.jpg", question="what?", answers=("red",) * 10,
                     answer_type=answer_type, question_type=question_type, answerable=answerable)


def _expected(name: str) -> dict[str, Any]:
    return json.loads((DATA / name / "expected.json").read_text())


class ThreadGroup:
    """`all_gather_objects` of `size` processes, played by threads: each rank's gather waits
    for every rank's share and returns them all in rank order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._barrier = threading.Barrier(size, timeout=10)
        self._shares: list[Any] = [None] * size

    def gather(self, rank: int) -> Gather:
        def all_gather(share: Any) -> list[Any]:
            self._shares[rank] = share
            self._barrier.wait()
            shares = list(self._shares)
            self._barrier.wait()  # every rank has read before any next call writes
            return shares
        return all_gather


def _in_processes(evaluators: list[DatasetEvaluator], call: Any) -> list[Any]:
    """`call(rank, evaluator)` for every rank's evaluator at once, as every process makes it."""
    with ThreadPoolExecutor(len(evaluators)) as pool:
        return list(pool.map(call, range(len(evaluators)), evaluators))


# --------------------------------------------------------------------------- official numbers


def test_vqa_evaluator_reproduces_official_numbers() -> None:
    records = _vqa_records()
    answers, _ = _vqa_predictions(records)
    expected = _expected("vqa_eval")
    evaluator = VQAEvaluator(records)
    half = len(records) // 2
    for rows in (range(half, len(records)), range(half)):  # two batches, out of order
        evaluator.process(list(rows), [answers[r] for r in rows])
    report = evaluator.evaluate()
    assert report["num_questions"] == len(records) == 400
    assert report["overall"] == pytest.approx(expected["overall"], abs=TOL)
    assert report["per_answer_type"] == pytest.approx(expected["perAnswerType"], abs=TOL)
    assert report["per_question_type"] == pytest.approx(expected["perQuestionType"], abs=TOL)
    assert report["question_type_counts"] == {"how many": 149, "is the": 130, "what is the": 121}
    assert "answerability" not in report

    evaluator.reset()
    assert evaluator.evaluate() == {"num_questions": 0}


def test_vizwiz_evaluator_reproduces_official_numbers(vizwiz_records: list[VQARecord]) -> None:
    answers, answerable = _vizwiz_predictions(vizwiz_records)
    expected = _expected("vizwiz_eval")
    evaluator = VizWizEvaluator(vizwiz_records)
    rows = list(range(len(vizwiz_records)))
    evaluator.process(rows[::2], answers[::2], answerable[::2])
    evaluator.process(rows[1::2], answers[1::2], answerable[1::2])
    report = evaluator.evaluate()
    assert report["num_questions"] == len(vizwiz_records) == 300
    assert report["overall"] == pytest.approx(expected["overall"], abs=TOL)
    assert report["per_answer_type"] == pytest.approx(expected["perAnswerType"], abs=TOL)
    assert "per_question_type" not in report  # VizWiz has no question types
    official = expected["unanswerability"]
    assert report["answerability"] == pytest.approx(
        {"average_precision": official["average_precision"], "f1": official["f1_score"]},
        abs=TOL)

    evaluator.reset()
    evaluator.process(rows, answers)  # no answerability head: no answerability metrics
    assert "answerability" not in evaluator.evaluate()


def test_the_metrics_differ_in_their_accuracy_rule() -> None:
    """VizWiz normalises only the prediction ("two" -> "2"), never the human answers."""
    records = [VQARecord(question_id=1, image_key="a.jpg", question="q?",
                         answers=("two",) * 10, answer_type="number")]
    reports = {}
    for metric in ("vqa", "vizwiz"):
        evaluator = build_evaluator(metric, records)
        evaluator.process([0], ["two"])
        reports[metric] = evaluator.evaluate()["overall"]
    assert reports == {"vqa": pytest.approx(100.0), "vizwiz": 0.0}


def test_per_question_type() -> None:
    """Question types come from the records; untyped records (VG) are in no type, and
    without any type (VizWiz, easy-VQA) the keys are absent."""
    records = [_record(1, "other", "what color is the"), _record(2, "yes/no", "is the"),
               _record(3, "other", "is the"), _record(4, "other", None)]
    evaluator = VQAEvaluator(records)
    evaluator.process([0, 1, 2, 3], ["red", "blue", "red", "red"])
    report = evaluator.evaluate()
    assert report["per_question_type"] == pytest.approx({"is the": 50.0,
                                                         "what color is the": 100.0})
    assert report["question_type_counts"] == {"is the": 2, "what color is the": 1}
    assert report["per_answer_type"] == pytest.approx({"other": 100.0, "yes/no": 0.0})
    assert report["overall"] == pytest.approx(75.0) and report["num_questions"] == 4

    untyped = VizWizEvaluator([_record("a.jpg", None)])
    untyped.process([0], ["red"])
    assert untyped.evaluate() == {"overall": 100.0, "per_answer_type": {"other": 100.0},
                                  "num_questions": 1}  # no answer type counts as other


def test_a_split_without_answers_is_written_not_scored(tmp_path: Path) -> None:
    evaluator = VQAEvaluator([VQARecord(question_id=1, image_key="a.jpg", question="what?")])
    evaluator.process([0], ["red"])
    assert evaluator.write_results(tmp_path / "r.json") == {"results": str(tmp_path / "r.json")}
    assert read_results(tmp_path / "r.json") == {1: "red"}
    with pytest.raises(LrcnError, match="cannot score a split without answers"):
        evaluator.evaluate()


def test_process_refuses_lists_of_other_lengths() -> None:
    evaluator = VizWizEvaluator([_record("a.jpg"), _record("b.jpg")])
    with pytest.raises(ValueError, match="2 rows, 1 answers and no answerability"):
        evaluator.process([0, 1], ["red"])
    with pytest.raises(ValueError, match="2 rows, 2 answers and 3 answerability"):
        evaluator.process([0, 1], ["red", "red"], [0.5, 0.5, 0.5])


# --------------------------------------------------------------------------- several processes


@pytest.mark.parametrize("metric", ["vqa", "vizwiz"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_shares_of_several_processes_evaluate_as_one(
        metric: str, world_size: int, vizwiz_records: list[VQARecord], tmp_path: Path) -> None:
    """Each process processes its share (rank, rank + world_size, ... in batches, as
    `predict_split`); with a gather function every process's `evaluate` and `write_results`
    give exactly what one process given every row gives."""
    records = _vqa_records() if metric == "vqa" else vizwiz_records
    answers, answerable = (_vqa_predictions if metric == "vqa" else _vizwiz_predictions)(records)

    def fill(evaluator: DatasetEvaluator, rows: list[int]) -> DatasetEvaluator:
        for start in range(0, len(rows), 7):
            batch = rows[start:start + 7]
            evaluator.process(batch, [answers[r] for r in batch],
                              None if answerable is None else [answerable[r] for r in batch])
        return evaluator

    one = fill(build_evaluator(metric, records), list(range(len(records))))
    expected_report = one.evaluate()
    expected_files = {name: Path(p).read_bytes()
                      for name, p in one.write_results(tmp_path / "one" / "r.json").items()}

    group = ThreadGroup(world_size)
    ranks = [fill(build_evaluator(metric, records, gather=group.gather(rank)),
                  list(range(rank, len(records), world_size))) for rank in range(world_size)]
    assert _in_processes(ranks, lambda _, e: e.evaluate()) == [expected_report] * world_size
    written = _in_processes(ranks, lambda rank, e: e.write_results(tmp_path / str(rank) / "r.json"))
    for rank, paths in enumerate(written):
        assert {name: Path(p).read_bytes() for name, p in paths.items()} == expected_files, rank


def test_without_gather_a_process_evaluates_its_own_share() -> None:
    records = [_record(1), _record(2)]
    evaluator = VQAEvaluator(records)
    evaluator.process([1], ["red"])
    assert evaluator.evaluate()["num_questions"] == 1


# --------------------------------------------------------------------------- submission files


def test_vqa_results_file(tmp_path: Path) -> None:
    records = [_record(q) for q in (30, 10, 20)]
    evaluator = VQAEvaluator(records)
    evaluator.process([2, 0], ["blue", "red"], [0.1, 0.9])  # P(answerable) is not written
    evaluator.process([1], ["red"], [0.5])
    path = tmp_path / "out" / "results.json"
    assert evaluator.write_results(path) == {"results": str(path)}
    assert json.loads(path.read_text()) == [  # record order
        {"question_id": 30, "answer": "red"}, {"question_id": 10, "answer": "red"},
        {"question_id": 20, "answer": "blue"}]
    assert read_results(path) == {30: "red", 10: "red", 20: "blue"}  # what `score` reads
    assert os.listdir(path.parent) == ["results.json"]


def test_vizwiz_submissions_score_as_evaluated(vizwiz_records: list[VQARecord],
                                               tmp_path: Path) -> None:
    """VizWiz's two submissions (the second only with answerability), which the official
    scoring of the files (`lrcn score --format vizwiz`) scores as `evaluate` did."""
    answers, answerable = _vizwiz_predictions(vizwiz_records)
    evaluator = VizWizEvaluator(vizwiz_records)
    evaluator.process(list(range(len(vizwiz_records))), answers, answerable)
    path = tmp_path / "vizwiz_val.json"
    written = evaluator.write_results(path)
    answerable_path = tmp_path / "vizwiz_val_answerable.json"
    assert written == {"results": str(path), "answerable_results": str(answerable_path)}
    assert sorted(os.listdir(tmp_path)) == ["vizwiz_val.json", "vizwiz_val_answerable.json"]
    first = vizwiz_records[0].question_id
    assert json.loads(path.read_text())[0] == {"image": first, "answer": answers[0]}
    assert json.loads(answerable_path.read_text())[0] == {"image": first,
                                                          "answerable": answerable[0]}
    scored = score_vizwiz_files(DATA / "vizwiz_eval" / "annotations.json", path, answerable_path)
    report = evaluator.evaluate()
    assert scored.keys() - {"per_question"} == report.keys()
    for key, value in report.items():
        assert scored[key] == pytest.approx(value, abs=1e-9), key

    alone = tmp_path / "answers_only"
    evaluator.reset()
    evaluator.process(list(range(len(vizwiz_records))), answers)  # no answerability head
    assert evaluator.write_results(alone / "r.json") == {"results": str(alone / "r.json")}
    assert os.listdir(alone) == ["r.json"]


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("dataset", dataset_names())
def test_every_dataset_metric_has_an_evaluator(dataset: str) -> None:
    evaluator = build_evaluator(dataset_metric(dataset), [])
    assert type(evaluator) is EVALUATORS[dataset_metric(dataset)]


def test_build_evaluator() -> None:
    with pytest.raises(TypeError, match="abstract"):
        DatasetEvaluator([])  # type: ignore[abstract]
    assert type(build_evaluator("vqa", [])) is VQAEvaluator
    assert type(build_evaluator("vizwiz", [])) is VizWizEvaluator
    with pytest.raises(LrcnError, match=r"unknown metric 'coco'; known: clevr, vizwiz, vqa$"):
        build_evaluator("coco", [])
