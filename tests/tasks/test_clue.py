"""CLUE cloze tasks (AFQMC, TNEWS, CLUEWSC) with the Chinese SentencePiece tokenizer: the original's patterns read
token by token, labels, accuracy and submission rows, the readers' errors, and a tiny model scored through the CLI."""

from __future__ import annotations

import json

import pytest

from torchglm.errors import InputError
from torchglm.tasks import clue, superglue
from torchglm.tasks.superglue import ClozeExample

CLS, EOS, MASK, SOP, EOP = 50002, 50000, 50003, 50006, 50007


@pytest.fixture(scope="module")
def chinese(shared_dir):
    from torchglm import GLMTokenizer

    return GLMTokenizer.from_sentencepiece(shared_dir / "data" / "vocab" / "cog-pretrain.model")


def pieces(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_afqmc_patterns_token_by_token(chinese):
    example = ClozeExample("dev-0", "花呗怎么还款", "借呗如何还", "1", idx=0)
    item = superglue.cloze_input(chinese, "afqmc", example)  # pattern 0: A ？ | 你是说 B ？ [MASK] 。
    assert pieces(chinese, item.part_a) == ["[CLS]", "▁花", "呗", "怎么", "还款", "▁?", "▁你是", "说", "▁借", "呗",
                                            "如何", "还", "▁?", "[MASK]", "▁。", "<|endoftext|>"]  # fmt: skip
    assert item.part_a[item.mask_position] == MASK and item.mask_position == 13
    assert item.verbalizer_ids == [2350, 570] and pieces(chinese, item.verbalizer_ids) == ["▁不是", "▁是"]
    assert item.label == 1  # "1": the pair means the same
    other = superglue.cloze_input(chinese, "afqmc", example, pattern_id=1)  # A ？ | [MASK] ， B
    assert pieces(chinese, other.part_a)[5:9] == ["▁?", "[MASK]", "▁,", "▁借"] and other.mask_position == 6
    # what the original's dataset held for it: eos padding, 2-D positions, sep, the verbalizers as targets
    arrays = superglue.fixed_length_arrays(item, 20, EOS, SOP)
    assert arrays["text"] == item.part_a + [SOP] + [EOS] * 3 and arrays["mask"] == 16
    assert arrays["position"][0][:17] == [*range(16), 13] and arrays["position"][1][:17] == [0] * 16 + [1]
    assert arrays["target"] == [2350, 570] and arrays["logit_mask"][15:18] == [0, 1, 0]


def test_tnews_is_a_multi_token_cloze_over_15_labels(chinese):
    example = ClozeExample("dev-0", "湖人队夺冠", "篮球,詹姆斯", "103", idx=7)
    item = superglue.cloze_input(chinese, "tnews", example)  # 标题：title 关键词：keywords 类别：[MASK]
    assert item.part_a is None and len(item.choice_ids) == 15 and item.label == 3  # 103 is the 4th label
    assert pieces(chinese, item.choice_part_a[0]) == ["[CLS]", "▁标题", ":", "▁", "湖人", "队", "夺冠", "▁",
                                                      "关键词", ":", "▁篮球", ",", "詹姆斯", "▁类别", ":", "[MASK]",
                                                      "<|endoftext|>"]  # fmt: skip
    assert all(a == item.choice_part_a[0] for a in item.choice_part_a) and set(item.choice_mask_positions) == {15}
    assert [chinese.decode(ids[:-1]) for ids in item.choice_ids] == list(clue.TNEWS_ANSWERS.values())
    assert item.choice_ids[3] == [18920, EOP] and pieces(chinese, item.choice_ids[3]) == ["▁体育", "<|endofpiece|>"]
    assert pieces(chinese, item.choice_ids[5]) == ["▁", "居家", "<|endofpiece|>"]  # 居家: two tokens
    arrays = superglue.fixed_length_arrays(item, 24, EOS, SOP)  # the 居家 row: [sop] ▁ 居家 at the blank
    assert arrays["text"][5][17:20] == [SOP, 43358, 22761] and arrays["mask"][5] == 17
    assert arrays["position"][5][0][17:20] == [15, 15, 15] and arrays["position"][5][1][17:20] == [1, 2, 3]
    assert arrays["target"][5][17:20] == [43358, 22761, EOP]


def test_cluewsc_marks_pronoun_and_noun(chinese):
    meta = {"span1_text": "小明", "span1_index": 0, "span2_text": "他", "span2_index": 6}
    example = ClozeExample("dev-0", "小明对小红说他饿了。", None, "true", meta, 3)
    assert clue.marked_text(example) == "#小明#对小红说*他*饿了。"
    item = superglue.cloze_input(chinese, "cluewsc", example)  # text 代词'*他*' [MASK] 指#小明#.
    assert pieces(chinese, item.part_a) == ["[CLS]", "▁#", "小明", "#", "对", "小红", "说", "*", "他", "*", "饿了",
                                            "。", "▁代", "词", "'", "*", "他", "*", "'", "[MASK]", "▁指", "#", "小明",
                                            "#", ".", "<|endoftext|>"]  # fmt: skip
    assert item.mask_position == 19 and pieces(chinese, item.verbalizer_ids) == ["▁不是", "▁是"] and item.label == 1
    other = superglue.cloze_input(chinese, "cluewsc", example, pattern_id=1)  # 在如下的句子中：... 指'#小明#'.
    assert pieces(chinese, other.part_a)[1:7] == ["▁在", "如", "下的", "句子", "中", ":"]
    assert pieces(chinese, other.part_a)[-8:-1] == ["▁指", "'", "#", "小明", "#", "'", "."]
    with pytest.raises(InputError, match=r"cluewsc has no pattern 2 \(its patterns: 0..1\)"):
        superglue.cloze_input(chinese, "cluewsc", example, pattern_id=2)


def write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_labels_accuracy_and_submission_rows(tmp_path):
    folder = tmp_path / "clue"
    write_lines(folder / "tnews" / "dev_few_all.json", [
        {"label": 115, "sentence": "a", "keywords": "", "id": 9},
        {"label": 100, "sentence": "b", "keywords": "k", "id": 2},
        {"label": 116, "sentence": "c", "keywords": "", "id": 5},
    ])  # fmt: skip
    write_lines(folder / "cluewsc" / "test_public.json", [
        {"target": {"span1_text": "猫", "span1_index": 0, "span2_text": "它", "span2_index": 2}, "idx": 4,
         "label": "false", "text": "猫说它"},
    ])  # fmt: skip
    path = superglue.task_file(folder, "tnews", "val")  # "val" finds FewCLUE's dev_few_all.json
    assert path == folder / "tnews" / "dev_few_all.json"
    tnews = superglue.read_examples("tnews", path, "dev")
    assert [(e.label, e.idx, e.text_b) for e in tnews] == [("115", 9, ""), ("100", 2, "k"), ("116", 5, "")]
    assert [superglue.LABELS["tnews"].index(e.label) for e in tnews] == [13, 0, 14]
    # predictions 13, 1, 14: two of three right
    assert superglue.metrics("tnews", tnews, [13, 1, 14]) == {"accuracy": pytest.approx(200 / 3)}
    assert superglue.submission_rows("tnews", tnews, [13, 1, 14]) == [
        {"id": 2, "label": "101"}, {"id": 5, "label": "116"}, {"id": 9, "label": "115"}]  # ordered by id  # fmt: skip
    assert superglue.submission_file("tnews") == "tnews_predict.json"
    [wsc] = superglue.read_examples("cluewsc", superglue.task_file(folder, "cluewsc", "test"), "test")
    assert (wsc.label, wsc.idx, wsc.meta["span2_index"]) == ("false", 4, 2)
    afqmc = [ClozeExample(f"dev-{i}", "", "", label) for i, label in enumerate(["0", "1", "1", "0"])]
    assert superglue.metrics("afqmc", afqmc, [0, 1, 0, 1]) == {"accuracy": pytest.approx(50.0)}


def test_bad_input_names_file_line_and_field(tmp_path, capsys):
    from torchglm.cli import main

    folder = tmp_path / "afqmc"
    path = write_lines(folder / "dev.json", [{"sentence1": "a", "sentence2": "b", "label": "0"},
                                             {"sentence1": "a", "label": "1"}])  # fmt: skip
    with pytest.raises(InputError, match=r'dev.json, line 2: field "sentence2" is missing'):
        superglue.read_examples("afqmc", path)
    write_lines(path, [{"sentence": "a", "keywords": "", "label": 105}])
    with pytest.raises(InputError, match=r'dev.json, line 1: field "label": unknown label 105 \(the task\'s labels'):
        superglue.read_examples("tnews", path)
    write_lines(path, [{"target": {"span1_text": "猫", "span1_index": 0, "span2_text": "它", "span2_index": 1},
                        "label": "true", "text": "猫说它"}])  # fmt: skip
    with pytest.raises(InputError, match=r'line 1: field "target.span2_index": 1 is not where "它" is'):
        superglue.read_examples("cluewsc", path)
    path.write_text("\n")
    with pytest.raises(InputError, match=r"dev.json: the file is empty"):
        superglue.read_examples("afqmc", path)
    with pytest.raises(InputError, match=r"no train.json or train_few_all.json \(the afqmc train split"):
        superglue.task_file(tmp_path, "afqmc", "train")
    # through the command line: one line, exit status 2
    assert main(["evaluate", "superglue", "--task", "afqmc", "--data", str(tmp_path), "--split", "train",
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no train.json or train_few_all.json" in err


@pytest.fixture(scope="module")
def tiny_chinese_model(chinese, tmp_path_factory):
    """A random 2-layer, 64-wide GLM over the Chinese vocabulary, saved with its tokenizer."""
    import torch

    from torchglm import GLMConfig, GLMForConditionalGeneration

    torch.manual_seed(0)
    config = GLMConfig(vocab_size=50048, hidden_size=64, num_layers=2, num_attention_heads=4,
                       max_sequence_length=256)  # fmt: skip
    folder = tmp_path_factory.mktemp("glm-tiny-zh")
    GLMForConditionalGeneration(config).save_pretrained(folder)
    chinese.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", ["afqmc", "tnews", "cluewsc"])
def test_zero_shot_evaluate_through_the_cli(shared_dir, tiny_chinese_model, tmp_path, task):
    from torchglm import GLMForConditionalGeneration, GLMTokenizer
    from torchglm.cli import main

    data, out = shared_dir / "data" / "clue", tmp_path / task
    args = ["evaluate", "superglue", "--task", task, "--model", str(tiny_chinese_model), "--data", str(data),
            "--limit", "5", "--output", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    model = GLMForConditionalGeneration.from_pretrained(tiny_chinese_model).eval()
    tokenizer = GLMTokenizer.from_pretrained(tiny_chinese_model)
    examples = superglue.read_examples(task, superglue.task_file(data, task, "val"), "dev")[:5]
    scored = superglue.score_inputs(model, tokenizer, superglue.build_inputs(tokenizer, task, examples))
    assert len(scored[0].scores) == len(superglue.LABELS[task])
    rows = [json.loads(line) for line in (out / f"{task}_predict.json").read_text().splitlines()]
    want = [{"id": e.idx, "label": superglue.LABELS[task][s.prediction]} for e, s in zip(examples, scored, strict=True)]
    assert rows == sorted(want, key=lambda row: row["id"])
    results = json.loads((out / "results.json").read_text())
    gold = [superglue.LABELS[task].index(e.label) for e in examples]
    accuracy = 100 * sum(s.prediction == g for s, g in zip(scored, gold, strict=True)) / 5
    assert results["metrics"] == {"accuracy": pytest.approx(accuracy)} and results["pattern_id"] == 0
