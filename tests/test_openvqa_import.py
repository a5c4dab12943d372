"""openvqa / mcan-vqa checkpoints in lrcn: the layer norm, the masking conventions, the
vocabularies, the tensor mapping, and ``lrcn import openvqa`` end to end against a reference
MCAN forward pass written here from openvqa's equations, on checkpoints and .npz features
built in openvqa's naming and format."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import assert_refused, run_cli, write_json
from lrcn.config import ModelConfig
from lrcn.data.batches import batch_loader
from lrcn.data.openvqa import openvqa_word_vocab, read_answer_dict
from lrcn.data.pipeline import encode_for_model, model_inputs
from lrcn.data.vqa2 import read_vqa2
from lrcn.engine import openvqa_import
from lrcn.engine.inference import load_model
from lrcn.engine.openvqa_import import openvqa_to_lrcn
from lrcn.errors import LrcnError
from lrcn.models import create_model
from lrcn.models.layers import AttentionPool, KeyMask, MultiHeadAttention, OpenVQALayerNorm

# A small MCAN: the sizes of the test preset below.
D, HEADS, LAYERS, FFN, POOL, FUSED, WORD_DIM, CHANNELS = 32, 4, 2, 64, 16, 40, 12, 24
MAX_TOKENS = 14


# --------------------------------------------------------------------------- the layer norm

def test_openvqa_norm_matches_the_formula_by_hand() -> None:
    norm = OpenVQALayerNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 1.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3), eps 1e-6 outside the root
    std = math.sqrt(14 / 3) + 1e-6
    expected = [1.0 * (1 - 3) / std, 2.0 * (2 - 3) / std + 0.1, 0.0, -1.0 * (6 - 3) / std + 1.0]
    assert torch.allclose(norm(x), torch.tensor([expected]), atol=1e-6)
    torch_norm = torch.nn.LayerNorm(4)
    with torch.no_grad():
        torch_norm.weight.copy_(norm.weight)
        torch_norm.bias.copy_(norm.bias)
    assert (torch_norm(x) - norm(x)).abs().max() > 1e-2  # biased variance: another function


def test_model_norm_selects_every_layer_norm_and_keeps_the_state_dict() -> None:
    cfg = dict(layers=2, d_model=32, heads=4, ffn_dim=64, word_dim=8, pool_hidden=16,
               fused_dim=24, image_encoder="features", feature_channels=CHANNELS, variant="cst")
    torch_model = create_model(ModelConfig(**cfg), 10, 5)
    openvqa_model = create_model(ModelConfig(**cfg, norm="openvqa"), 10, 5)
    norms = [m for m in openvqa_model.modules()
             if isinstance(m, (OpenVQALayerNorm, torch.nn.LayerNorm))]
    assert norms and all(isinstance(m, OpenVQALayerNorm) for m in norms)
    assert len(norms) == sum(isinstance(m, torch.nn.LayerNorm) for m in torch_model.modules())
    assert torch_model.state_dict().keys() == openvqa_model.state_dict().keys()


# --------------------------------------------------------------------------- masking rules

def test_a_query_without_keys_gets_zero_or_the_mean_of_the_values() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, 0.0, cross=True).eval()
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    valid = torch.tensor([[True] * 5, [False] * 5])
    zero = attn(q, kv, KeyMask.of(valid, "zero"))
    uniform = attn(q, kv, KeyMask.of(valid, "uniform"))
    assert torch.allclose(zero[0], uniform[0])  # rows with keys: the same either way
    assert torch.allclose(zero[1], attn.out_proj.bias.expand(3, 8))  # zero context
    values = F.linear(kv[1], attn.kv_proj.weight[8:], attn.kv_proj.bias[8:])  # (5, 8)
    mean_context = attn.out_proj(values.mean(dim=0))
    assert torch.allclose(uniform[1], mean_context.expand(3, 8), atol=1e-6)
    # openvqa's way: every score -1e9, a uniform softmax
    scores = torch.full((5,), -1e9)
    assert torch.allclose(scores.softmax(-1), torch.full((5,), 0.2))


def test_pooling_without_positions_is_zero_or_uniform() -> None:
    pool = AttentionPool(8, 4, 0.0).eval()
    x = torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, False, True, True], [False] * 5])
    pooled, weights = pool(x, KeyMask.of(valid, "uniform"))
    assert torch.allclose(weights[1], torch.full((5,), 0.2))
    assert torch.allclose(pooled[1], x[1].mean(dim=0), atol=1e-6)
    assert weights[0, 2] == 0 and torch.isclose(weights[0].sum(), torch.tensor(1.0))
    pooled, weights = pool(x, KeyMask.of(valid, "zero"))
    assert torch.all(weights[1] == 0) and torch.all(pooled[1] == 0)


def test_mask_zero_rows_treats_all_zero_regions_as_padding() -> None:
    cfg = dict(layers=1, d_model=16, heads=2, ffn_dim=32, word_dim=8, pool_hidden=8,
               fused_dim=12, image_encoder="features", feature_channels=6, dropout=0.0)
    torch.manual_seed(1)
    masking = create_model(ModelConfig(**cfg, mask_zero_rows=True), 10, 5).eval()
    plain = create_model(ModelConfig(**cfg), 10, 5).eval()
    plain.load_state_dict(masking.state_dict())
    tokens = torch.tensor([[3, 4, 5, 0]])
    grid = torch.randn(1, 7, 6)
    grid[0, [2, 5]] = 0
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, [2, 5]] = False
    with torch.no_grad():
        implicit = masking.forward_all(tokens, grid=grid).answer
        explicit = plain.forward_all(tokens, grid=grid, grid_mask=mask).answer
        unmasked = plain.forward_all(tokens, grid=grid).answer
    assert torch.allclose(implicit, explicit, atol=1e-6)
    assert not torch.allclose(implicit, unmasked, atol=1e-4)


# --------------------------------------------------------------------------- fixtures

WORDS = ("what color is the shape left-right of circle square how many are there red blue "
         "green man's dog/cat (big) small *star* #1 it; a \"quoted\" triangle").split()
ANSWERS = ["red", "blue", "yes", "no", "2", "3", "green", "circle"]
IMAGE_IDS = list(range(100, 106))


def make_openvqa_data(root: Path, seed: int = 0) -> dict:
    """VQA-v2 layout question files for openvqa's vocabulary, val2014 and train2014
    annotations, answer_dict.json, and openvqa .npz features of every image."""
    rng = np.random.default_rng(seed)
    qid, samples = 1, {}
    for split, n in (("train2014", 12), ("val2014", 12), ("test2015", 4), ("vg", 4)):
        questions, annotations = [], []
        for i in range(n):
            words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(3, 18))]
            image_id = IMAGE_IDS[i % len(IMAGE_IDS)] if split != "test2015" else 900 + i
            questions.append({"question_id": qid, "image_id": image_id,
                              "question": " ".join(words).capitalize() + "?"})
            answers = [ANSWERS[j] for j in rng.integers(0, len(ANSWERS), 10)]
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": "what color",
                "answer_type": "other", "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                            for k, a in enumerate(answers)]})
            qid += 1
        samples[split] = questions
        name = ("VG_questions.json" if split == "vg"
                else f"v2_OpenEnded_mscoco_{split}_questions.json")
        write_json(root / name, {"questions": questions})
        if split in ("train2014", "val2014"):
            write_json(root / f"v2_mscoco_{split}_annotations.json", {"annotations": annotations})
    write_json(root / "answer_dict.json", [{a: i for i, a in enumerate(ANSWERS)},
                                           {str(i): a for i, a in enumerate(ANSWERS)}])
    feats = {}
    for split in ("train2014", "val2014"):
        folder = root / "feats" / split
        folder.mkdir(parents=True)
        for image_id in IMAGE_IDS:
            regions = int(rng.integers(4, 11))
            x = rng.standard_normal((regions, CHANNELS)).astype(np.float32)
            if image_id == 101:
                x[1] = 0  # a zero row inside the list: openvqa masks it
            xs = np.sort(rng.uniform(0, 640, (regions, 2)), axis=1)
            ys = np.sort(rng.uniform(0, 480, (regions, 2)), axis=1)
            boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1).astype(np.float32)
            np.savez(folder / f"COCO_{split}_{image_id:012d}.jpg.npz", x=x.T, bbox=boxes,
                     image_h=480, image_w=640, num_bbox=regions)
            feats[(split, image_id)] = x
    return {"samples": samples, "feats": feats}


def openvqa_state(vocab: int, answers: int, seed: int = 0,
                  image_linear: str = "adapter.frcn_linear") -> dict[str, torch.Tensor]:
    """A random MCAN state dict in openvqa's naming (its 'random weights')."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd: dict[str, torch.Tensor] = {"embedding.weight": rand(vocab, WORD_DIM, scale=1.0)}
    for name, shape in (("weight_ih_l0", (4 * D, WORD_DIM)), ("weight_hh_l0", (4 * D, D)),
                        ("bias_ih_l0", (4 * D,)), ("bias_hh_l0", (4 * D,))):
        sd[f"lstm.{name}"] = rand(*shape)

    def linear(name: str, n_in: int, n_out: int) -> None:
        sd[f"{name}.weight"] = rand(n_out, n_in, scale=1 / math.sqrt(n_in))
        sd[f"{name}.bias"] = rand(n_out, scale=0.1)

    def norm(name: str, size: int) -> None:
        sd[f"{name}.a_2"] = 1 + rand(size, scale=0.2)
        sd[f"{name}.b_2"] = rand(size, scale=0.2)

    def mhatt(name: str) -> None:
        for part in ("linear_v", "linear_k", "linear_q", "linear_merge"):
            linear(f"{name}.{part}", D, D)

    def ffn(name: str) -> None:
        linear(f"{name}.mlp.fc.linear", D, FFN)
        linear(f"{name}.mlp.linear", FFN, D)

    linear(image_linear, CHANNELS, D)
    for i in range(LAYERS):
        mhatt(f"backbone.enc_list.{i}.mhatt")
        ffn(f"backbone.enc_list.{i}.ffn")
        norm(f"backbone.enc_list.{i}.norm1", D)
        norm(f"backbone.enc_list.{i}.norm2", D)
    for i in range(LAYERS):
        mhatt(f"backbone.dec_list.{i}.mhatt1")
        mhatt(f"backbone.dec_list.{i}.mhatt2")
        ffn(f"backbone.dec_list.{i}.ffn")
        for j in (1, 2, 3):
            norm(f"backbone.dec_list.{i}.norm{j}", D)
    for stream in ("img", "lang"):
        linear(f"attflat_{stream}.mlp.fc.linear", D, POOL)
        linear(f"attflat_{stream}.mlp.linear", POOL, 1)
        linear(f"attflat_{stream}.linear_merge", D, FUSED)
    norm("proj_norm", FUSED)
    linear("proj", FUSED, answers)
    sd["proj.weight"] *= 20  # answers that differ from question to question
    return sd


# --------------------------------------------------------------------------- reference MCAN

def ref_tokens(question: str, token_to_ix: dict[str, int]) -> torch.Tensor:
    """openvqa's proc_ques: strip .,'!?"()*#:; lower, - and / to spaces, 14 ids, UNK = 1."""
    text = question.lower()
    for ch in ".,'!?\"()*#:;":
        text = text.replace(ch, "")
    words = text.replace("-", " ").replace("/", " ").split()[:MAX_TOKENS]
    ids = [token_to_ix.get(w, 1) for w in words]
    return torch.tensor(ids + [0] * (MAX_TOKENS - len(ids)))


def ref_vocab(question_lists: list[list[dict]], cls: bool = True) -> dict[str, int]:
    token_to_ix = {"PAD": 0, "UNK": 1, **({"CLS": 2} if cls else {})}
    for questions in question_lists:
        for q in questions:
            for word in ref_tokens_words(q["question"]):
                token_to_ix.setdefault(word, len(token_to_ix))
    return token_to_ix


def ref_tokens_words(question: str) -> list[str]:
    text = question.lower()
    for ch in ".,'!?\"()*#:;":
        text = text.replace(ch, "")
    return text.replace("-", " ").replace("/", " ").split()


def ref_mcan(sd: dict[str, torch.Tensor], tokens: torch.Tensor, feats: torch.Tensor,
             image_linear: str = "adapter.frcn_linear") -> torch.Tensor:
    """MCAN-ED's forward as openvqa writes it (eval mode): tokens (T,), feats (100, C) -> (K,)."""
    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        return sd[f"{name}.a_2"] * (x - mean) / (std + 1e-6) + sd[f"{name}.b_2"]

    def mhatt(name: str, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(-1, HEADS, D // HEADS).transpose(0, 1)
        v, k, q = (heads(lin(v, f"{name}.linear_v")), heads(lin(k, f"{name}.linear_k")),
                   heads(lin(q, f"{name}.linear_q")))
        scores = (q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)).masked_fill(mask, -1e9)
        return lin((scores.softmax(-1) @ v).transpose(0, 1).reshape(-1, D), f"{name}.linear_merge")

    def ffn(x: torch.Tensor, name: str) -> torch.Tensor:
        return lin(torch.relu(lin(x, f"{name}.mlp.fc.linear")), f"{name}.mlp.linear")

    def attflat(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
        att = ffn(x, name).masked_fill(mask.unsqueeze(1), -1e9).softmax(0)  # (N, 1)
        return lin((att * x).sum(0), f"{name}.linear_merge")

    lang_mask, img_mask = tokens == 0, feats.abs().sum(-1) == 0  # True = masked
    lstm = torch.nn.LSTM(WORD_DIM, D, batch_first=True)
    lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})
    y, _ = lstm(F.embedding(tokens, sd["embedding.weight"])[None])
    y, x = y[0], lin(feats, image_linear)
    for i in range(LAYERS):
        p = f"backbone.enc_list.{i}"
        y = norm(y + mhatt(f"{p}.mhatt", y, y, y, lang_mask), f"{p}.norm1")
        y = norm(y + ffn(y, f"{p}.ffn"), f"{p}.norm2")
    for i in range(LAYERS):
        p = f"backbone.dec_list.{i}"
        x = norm(x + mhatt(f"{p}.mhatt1", x, x, x, img_mask), f"{p}.norm1")
        x = norm(x + mhatt(f"{p}.mhatt2", y, y, x, lang_mask), f"{p}.norm2")
        x = norm(x + ffn(x, f"{p}.ffn"), f"{p}.norm3")
    fused = attflat(y, lang_mask, "attflat_lang") + attflat(x, img_mask, "attflat_img")
    return lin(norm(fused, "proj_norm"), "proj")


def padded(x: np.ndarray) -> torch.Tensor:
    """openvqa's proc_img_feat: (R, C) zero-padded to 100 rows."""
    return torch.from_numpy(np.pad(x, ((0, 100 - len(x)), (0, 0))))


@pytest.fixture
def tiny_mcan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``--model mcan_small`` reads a small MCAN preset (the sizes above), not 48 M weights."""
    preset = yaml.safe_load((Path(openvqa_import.__file__).parent.parent / "presets"
                             / "mcan-small.yaml").read_text())
    preset["model"].update(layers=LAYERS, d_model=D, heads=HEADS, ffn_dim=FFN,
                           pool_hidden=POOL, fused_dim=FUSED)
    path = tmp_path / "tiny-mcan.yaml"
    path.write_text(yaml.safe_dump(preset))
    monkeypatch.setitem(openvqa_import.MODELS, "mcan_small", str(path))
    return path


def save_openvqa_checkpoint(path: Path, sd: dict[str, torch.Tensor], prefix: str = "") -> Path:
    """As openvqa's train engine saves it: state_dict, Adam's state, lr_base, epoch."""
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    torch.save({"state_dict": {prefix + k: v for k, v in sd.items()},
                "optimizer": optimizer.state_dict(), "lr_base": 1e-4, "epoch": 13}, path)
    return path


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("prefix", ["", "module."])
def test_imported_mcan_answers_as_openvqa_does(tmp_path: Path, tiny_mcan: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               prefix: str) -> None:
    data = make_openvqa_data(tmp_path)
    samples = data["samples"]
    token_to_ix = ref_vocab([samples[s] for s in ("train2014", "val2014", "test2015", "vg")])
    sd = openvqa_state(len(token_to_ix), len(ANSWERS))
    ckpt = save_openvqa_checkpoint(tmp_path / "epoch13.pkl", sd, prefix)
    store, run = tmp_path / "store", tmp_path / "run"

    result = run_cli(capsys, "features", "import", "--format", "openvqa", "--dtype", "float32",
                     "--channels", CHANNELS, "--src", tmp_path / "feats", "--out", store, "--json")
    assert result.code == 0, result.err
    result = run_cli(capsys, "import", "openvqa", "--checkpoint", ckpt, "--data-root", tmp_path,
                     "--answer-dict", tmp_path / "answer_dict.json", "--model", "mcan_small",
                     "--out", run, "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["vocab_size"] == len(token_to_ix) and summary["num_answers"] == len(ANSWERS)
    assert summary["parameters"] == sum(v.numel() for v in sd.values())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["norm"] == "openvqa" and config["model"]["lrm"] == "none"
    assert config["model"]["mask_zero_rows"] and config["model"]["no_key_attention"] == "uniform"
    assert config["data"]["word_vocab"] == "openvqa"

    results = tmp_path / "val.json"
    result = run_cli(capsys, "evaluate", "--checkpoint", run, "--features", store,
                     "--split", "val2014", "--data-root", tmp_path, "--results", results)
    assert result.code == 0, result.err
    answered = {r["question_id"]: r["answer"] for r in json.loads(results.read_text())}
    expected = {}
    logits_ref = {}
    with torch.no_grad():
        for q in samples["val2014"]:
            logits = ref_mcan(sd, ref_tokens(q["question"], token_to_ix),
                              padded(data["feats"][("val2014", q["image_id"])]))
            logits_ref[q["question_id"]] = logits
            expected[q["question_id"]] = ANSWERS[int(logits.argmax())]
    assert answered == expected
    assert len(set(expected.values())) > 2  # the answers differ between questions

    # and the logits themselves, through the Python API
    loaded = load_model(run, "cpu")
    d = loaded.checkpoint.config.data
    d.features = [str(store)]
    split = read_vqa2(tmp_path, "val2014")
    encoded = encode_for_model(split, loaded.word_vocab, loaded.answer_vocab, d,
                               loaded.model.image_input(), loaded.device)
    with torch.no_grad():
        for batch in batch_loader(encoded, len(ANSWERS), 64, shuffle=False):
            out = loaded.model.eval().forward_all(**model_inputs(batch, loaded.device)).answer
            for row, logits in zip(batch["rows"].tolist(), out):
                ref = logits_ref[encoded.records[row].question_id]
                assert torch.allclose(logits, ref, atol=1e-4), (logits, ref)


def test_init_from_an_imported_mcan_with_lrm_trains(tmp_path: Path, tiny_mcan: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = make_openvqa_data(tmp_path)
    token_to_ix = ref_vocab([data["samples"][s]
                             for s in ("train2014", "val2014", "test2015", "vg")])
    sd = openvqa_state(len(token_to_ix), len(ANSWERS))
    ckpt = save_openvqa_checkpoint(tmp_path / "epoch13.pkl", sd)
    store, run, tuned = tmp_path / "store", tmp_path / "run", tmp_path / "tuned"
    assert run_cli(capsys, "features", "import", "--format", "openvqa", "--dtype", "float32",
                   "--channels", CHANNELS, "--src", tmp_path / "feats", "--out", store).code == 0
    assert run_cli(capsys, "import", "openvqa", "--checkpoint", ckpt, "--data-root", tmp_path,
                   "--answer-dict", tmp_path / "answer_dict.json", "--model", "mcan_small",
                   "--out", run).code == 0
    result = run_cli(capsys, "train", "--init", run, "--lrm", "sa", "--epochs", "1",
                     "--features", store, "--data-root", tmp_path, "--train-split", "train2014",
                     "--val-split", "val2014", "--batch-size", "4", "--no-tensorboard",
                     "--out", tuned, "--json")
    assert result.code == 0, result.err
    assert result.json["epochs"] == 1
    source, tuned_model = load_model(run, "cpu"), load_model(tuned, "cpu")
    assert tuned_model.checkpoint.config.model.lrm == "sa"
    assert tuned_model.checkpoint.config.model.norm == "openvqa"
    assert tuned_model.word_vocab == source.word_vocab
    changed = [k for k, v in tuned_model.model.state_dict().items()
               if not torch.equal(v, source.model.state_dict()[k])]
    assert changed  # it trained


# --------------------------------------------------------------------------- the pieces

def test_vocabulary_is_first_appearance_over_the_four_files(tmp_path: Path) -> None:
    files = {"train2014": ["What color-is it?", "Is the dog/cat big?"],
             "val2014": ["What IS (this) thing;", "man's hat"],
             "test2015": ["new words here"], "vg": ["color #1 *star*"]}
    qid = 1
    for split, questions in files.items():
        name = ("VG_questions.json" if split == "vg"
                else f"v2_OpenEnded_mscoco_{split}_questions.json")
        records = []
        for q in questions:
            records.append({"question_id": qid, "image_id": 1, "question": q})
            qid += 1
        write_json(tmp_path / "Questions" / name if split != "vg" else tmp_path / name,
                   {"questions": records})
    vocab = openvqa_word_vocab(tmp_path)
    assert vocab.words == ["<pad>", "<unk>", "CLS", "what", "color", "is", "it", "the", "dog",
                           "cat", "big", "this", "thing", "mans", "hat", "new", "words", "here",
                           "1", "star"]
    assert openvqa_word_vocab(tmp_path, with_cls=False).words[2] == "what"
    (tmp_path / "VG_questions.json").unlink()
    with pytest.raises(LrcnError, match="VG_questions.json not found"):
        openvqa_word_vocab(tmp_path)


def test_answer_dict_is_read_and_checked(tmp_path: Path) -> None:
    good = write_json(tmp_path / "a.json", [{"yes": 0, "no": 1}, {"0": "yes", "1": "no"}])
    assert read_answer_dict(good).answers == ["yes", "no"]
    bad = write_json(tmp_path / "b.json", [{"yes": 1, "no": 0}, {"0": "yes", "1": "no"}])
    with pytest.raises(LrcnError, match="b.json.*ans_to_ix\\['yes'\\] is 1"):
        read_answer_dict(bad)
    with pytest.raises(LrcnError, match="c.json"):
        read_answer_dict(write_json(tmp_path / "c.json", {"yes": 0}))


def test_mapping_covers_every_tensor_both_ways() -> None:
    sd = openvqa_state(30, len(ANSWERS))
    mapped = openvqa_to_lrcn(sd)
    cfg = ModelConfig(variant="ed", lrm="none", layers=LAYERS, d_model=D, heads=HEADS,
                      ffn_dim=FFN, pool_hidden=POOL, fused_dim=FUSED, word_dim=WORD_DIM,
                      image_encoder="features", feature_channels=CHANNELS, norm="openvqa")
    model = create_model(cfg, 30, len(ANSWERS))
    assert mapped.keys() == model.state_dict().keys()
    model.load_state_dict(mapped)  # every shape fits
    assert sum(v.numel() for v in mapped.values()) == sum(v.numel() for v in sd.values())
    qkv = mapped["net.question_blocks.0.self_attn.qkv_proj.weight"]
    assert torch.equal(qkv[:D], sd["backbone.enc_list.0.mhatt.linear_q.weight"])
    assert torch.equal(qkv[2 * D:], sd["backbone.enc_list.0.mhatt.linear_v.weight"])
    kv = mapped["net.image_layers.1.guided_attn.kv_proj.bias"]
    assert torch.equal(kv[:D], sd["backbone.dec_list.1.mhatt2.linear_k.bias"])


def test_mcan_vqa_naming_maps_too() -> None:
    sd = openvqa_state(30, len(ANSWERS), image_linear="img_feat_linear")
    assert torch.equal(openvqa_to_lrcn(sd)["net.image_proj.weight"],
                       sd["img_feat_linear.weight"])


def test_tensors_left_over_on_either_side_are_named() -> None:
    sd = openvqa_state(30, len(ANSWERS))
    sd["adapter.bbox_linear.weight"] = torch.zeros(8, 5)
    del sd["backbone.dec_list.1.norm3.b_2"]
    with pytest.raises(LrcnError) as info:
        openvqa_to_lrcn(sd)
    assert "backbone.dec_list.1.norm3.b_2" in str(info.value)
    assert "adapter.bbox_linear.weight" in str(info.value)


def test_import_refuses_bad_checkpoints_and_writes_nothing(
        tmp_path: Path, tiny_mcan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_openvqa_data(tmp_path)
    vocab = ref_vocab([data["samples"][s] for s in ("train2014", "val2014", "test2015", "vg")])
    args = ["--data-root", tmp_path, "--answer-dict", tmp_path / "answer_dict.json",
            "--model", "mcan_small", "--out", tmp_path / "run"]
    pickled = tmp_path / "pickled.pkl"
    torch.save({"state_dict": openvqa_state(len(vocab), len(ANSWERS)),
                "args": argparse.Namespace(lr=1)}, pickled)
    assert_refused(run_cli(capsys, "import", "openvqa", "--checkpoint", pickled, *args),
                   "import", "pickled.pkl", "--trust-pickle", absent=(tmp_path / "run",))
    assert run_cli(capsys, "import", "openvqa", "--checkpoint", pickled, *args,
                   "--trust-pickle").code == 0
    (tmp_path / "run").rename(tmp_path / "first")

    fewer = save_openvqa_checkpoint(tmp_path / "fewer.pkl",
                                    openvqa_state(len(vocab) - 1, len(ANSWERS)))
    assert_refused(run_cli(capsys, "import", "openvqa", "--checkpoint", fewer, *args),
                   "import", f"give {len(vocab)} words", f"embedding has {len(vocab) - 1}",
                   absent=(tmp_path / "run",))
    other = save_openvqa_checkpoint(tmp_path / "other.pkl",
                                    openvqa_state(len(vocab), len(ANSWERS) + 1))
    assert_refused(run_cli(capsys, "import", "openvqa", "--checkpoint", other, *args),
                   "import", "answer_dict.json has 8 answers", absent=(tmp_path / "run",))
    not_ckpt = tmp_path / "notes.pkl"
    torch.save({"epoch": 3}, not_ckpt)
    assert_refused(run_cli(capsys, "import", "openvqa", "--checkpoint", not_ckpt, *args),
                   "import", "notes.pkl", "state_dict", absent=(tmp_path / "run",))


def test_import_names_a_size_that_is_not_the_model(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without the tiny preset, the small checkpoint is not mcan_small (D = 512)."""
    data = make_openvqa_data(tmp_path)
    vocab = ref_vocab([data["samples"][s] for s in ("train2014", "val2014", "test2015", "vg")])
    ckpt = save_openvqa_checkpoint(tmp_path / "c.pkl", openvqa_state(len(vocab), len(ANSWERS)))
    assert_refused(run_cli(capsys, "import", "openvqa", "--checkpoint", ckpt, "--data-root",
                           tmp_path, "--answer-dict", tmp_path / "answer_dict.json", "--model",
                           "mcan_small", "--out", tmp_path / "run"),
                   "import", "model.layers = 2", "mcan_large", absent=(tmp_path / "run",))


def test_features_import_can_mask_zero_rows(tmp_path: Path) -> None:
    from lrcn.features.formats import import_features

    make_openvqa_data(tmp_path)
    with import_features("openvqa", tmp_path / "feats" / "val2014", tmp_path / "s", "float32",
                         CHANNELS, mask_zero_rows=True) as store, \
            import_features("openvqa", tmp_path / "feats" / "val2014", tmp_path / "t",
                            "float32", CHANNELS) as plain:
        row = store.row_of("COCO_val2014_000000000101.jpg")
        assert row is not None
        assert store.source["mask_zero_rows"] is True
        _, mask = store.read([row])
        _, plain_mask = plain.read([row])
        assert not mask[0, 1] and plain_mask[0, 1]  # the zero row inside the list
        assert int((mask[0] != plain_mask[0]).sum()) == 1


def test_mcan_vqa_checkpoint_imports_with_its_vocabulary(
        tmp_path: Path, tiny_mcan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_openvqa_data(tmp_path)
    vocab = ref_vocab([data["samples"][s] for s in ("train2014", "val2014", "test2015", "vg")],
                      cls=False)
    sd = openvqa_state(len(vocab), len(ANSWERS), image_linear="img_feat_linear")
    torch.save({"state_dict": sd, "lr_base": 1e-4}, tmp_path / "mcan.pkl")  # no epoch saved
    result = run_cli(capsys, "import", "openvqa", "--checkpoint", tmp_path / "mcan.pkl",
                     "--data-root", tmp_path, "--answer-dict", tmp_path / "answer_dict.json",
                     "--model", "mcan_small", "--out", tmp_path / "run", "--json")
    assert result.code == 0, result.err
    loaded = load_model(tmp_path / "run", "cpu")
    assert loaded.checkpoint.config.data.word_vocab == "mcan-vqa"
    assert loaded.word_vocab.words == ["<pad>", "<unk>", *list(vocab)[2:]]


def test_training_can_use_openvqas_vocabulary(tmp_path: Path) -> None:
    from lrcn.config import RunConfig
    from lrcn.engine.setup import prepare_data

    make_openvqa_data(tmp_path)
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_root = "vqa2", str(tmp_path)
    cfg.data.train_split, cfg.data.val_split = "train2014", "val2014"
    cfg.data.word_vocab = "openvqa"
    assert prepare_data(cfg).word_vocab == openvqa_word_vocab(tmp_path)
    cfg.data.word_vocab = "train"
    assert prepare_data(cfg).word_vocab != openvqa_word_vocab(tmp_path)
    bundled = RunConfig()  # easy-VQA, which needs no data root of its own
    bundled.data.word_vocab = "openvqa"
    with pytest.raises(LrcnError, match="data.word_vocab openvqa .* set data.data_root"):
        prepare_data(bundled)


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path: Path, tiny_mcan: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_openvqa_data(tmp_path)
    result = run_cli(capsys, "import", "openvqa", "--checkpoint", tmp_path / "answer_dict.json",
                     "--data-root", tmp_path, "--answer-dict", tmp_path / "answer_dict.json",
                     "--model", "mcan_small", "--out", tmp_path / "run")
    assert_refused(result, "import", "answer_dict.json", "not a PyTorch checkpoint",
                   absent=(tmp_path / "run",))
    assert "--trust-pickle" not in result.err
