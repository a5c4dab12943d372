"""openvqa's and mcan-vqa's vocabularies, rebuilt exactly, for the checkpoints they save.

A model trained with openvqa (MILVLG/openvqa) or mcan-vqa (MILVLG/mcan-vqa) indexes question
words by their own rule: the special tokens first (``PAD`` 0, ``UNK`` 1 and, in openvqa only,
``CLS`` 2), then every word of the VQA-v2 train2014, val2014 and test2015 question files and
of ``VG_questions.json``, in the order each first appears there. The words are lrcn's own
tokenization (`lrcn.data.text.tokenize`), which is the same rule: lower case, ``.,'!?"()*#:;``
deleted, ``-`` and ``/`` turned into spaces. Answers come from their ``answer_dict.json``
(``[ans_to_ix, ix_to_ans]``).

The vocabulary becomes a `WordVocab` whose first entries are lrcn's ``<pad>`` and ``<unk>`` at
the same indices 0 and 1, then ``CLS`` (a word no lower-cased question contains) where openvqa
has it, then the words: every index means what it meant to the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from lrcn.data.answers import AnswerVocab
from lrcn.data.text import PAD, UNK, WordVocab, tokenize
from lrcn.data.vqa2 import JSON_DIRS, VG_SPLIT, questions_filename, read_questions_file
from lrcn.errors import LrcnError
from lrcn.json_records import find_json, load_json

QUESTION_SPLITS = ("train2014", "val2014", "test2015", VG_SPLIT)  # the order openvqa reads them
CLS = "CLS"


def openvqa_word_vocab(root: str | Path, with_cls: bool = True) -> WordVocab:
    """openvqa's question vocabulary from the four question files under `root` (``with_cls``:
    openvqa's ``PAD, UNK, CLS``; without: mcan-vqa's ``PAD, UNK``)."""
    root = Path(root)
    words: dict[str, None] = {CLS: None} if with_cls else {}  # ordered set: first appearance
    for split in QUESTION_SPLITS:
        path = find_json(root, questions_filename(split), JSON_DIRS,
                         "openvqa's vocabulary is built from the train2014, val2014, test2015 "
                         "and VG question files: ")
        for question in read_questions_file(path).values():
            for word in tokenize(question["question"]):
                if word in (PAD, UNK):
                    raise LrcnError(f"{path}: question_id {question['question_id']}: the word "
                                    f"{word!r} is reserved in lrcn's vocabulary")
                words.setdefault(word, None)
    return WordVocab(list(words))


def read_answer_dict(path: str | Path) -> AnswerVocab:
    """openvqa's ``answer_dict.json``: ``[ans_to_ix, ix_to_ans]``, checked against each other."""
    path = Path(path)
    data = load_json(path, "answer dictionary")
    if not (isinstance(data, list) and len(data) == 2
            and all(isinstance(part, dict) for part in data)):
        raise LrcnError(f"{path}: expected openvqa's [ans_to_ix, ix_to_ans], two JSON objects")
    ans_to_ix, ix_to_ans = data
    answers = []
    for i in range(len(ix_to_ans)):
        answer = ix_to_ans.get(str(i))
        if not isinstance(answer, str):
            raise LrcnError(f"{path}: ix_to_ans has no answer for index {i} (indices must run "
                            f"0..{len(ix_to_ans) - 1})")
        if ans_to_ix.get(answer) != i:
            raise LrcnError(f"{path}: ans_to_ix[{answer!r}] is {ans_to_ix.get(answer)!r}, but "
                            f"ix_to_ans gives it index {i}")
        answers.append(answer)
    if len(ans_to_ix) != len(answers):
        raise LrcnError(f"{path}: ans_to_ix has {len(ans_to_ix)} answers, ix_to_ans "
                        f"{len(answers)}")
    return AnswerVocab(answers)
