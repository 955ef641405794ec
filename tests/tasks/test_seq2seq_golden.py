"""The original GLM's seq2seq code on XSum (``../shared/golden/seq2seq-xsum.json``): its training inputs, its
evaluation input and its greedy and beam summaries with their scores, rebuilt through the public task API and
the CLI from the raw jsonl lines. Any case of the file is checked by the same rule."""

from __future__ import annotations

import json

import pytest
import torch

from torchglm import GLMForConditionalGeneration, GLMTokenizer
from torchglm.layout import Block, Sample, build_batch
from torchglm.tasks import seq2seq


@pytest.fixture(scope="module")
def golden(shared_dir):
    return json.loads((shared_dir / "golden" / "seq2seq-xsum.json").read_text())


@pytest.fixture(scope="module")
def reference(shared_dir):
    folder = shared_dir / "golden" / "glm-ref-fill"
    model = GLMForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, GLMTokenizer.from_pretrained(folder)


def golden_task(settings) -> seq2seq.Seq2SeqTask:
    return seq2seq.get_task(
        settings["task"],
        src_seq_length=settings["src_seq_length"],
        tgt_seq_length=settings["tgt_seq_length"],
        num_beams=settings["num_beams"],
        length_penalty=settings["length_penalty"],
        min_new_tokens=settings["min_tgt_length"],
        no_repeat_ngram_size=settings["no_repeat_ngram_size"],
    )


def examples_of(shared_dir, golden):
    task = golden_task(golden["settings"])
    lines = (shared_dir / "data" / "xsum" / "test1000.jsonl").read_text().splitlines()
    out = []
    for case in golden["cases"]:
        record = json.loads(lines[case["line"]])
        assert record["document"] == case["document"]
        source = seq2seq.clean_source(record[task.source_field])
        out.append((case, seq2seq.Seq2SeqExample(source, record[task.target_field].strip(), case["id"])))
    return task, out


def original_training_layout(batch, tgt_seq_length: int, pad_id: int) -> dict:
    """The original's fixed-length arrays from torchglm's batch of one sample: part B padded to tgt_seq_length
    with [PAD] inputs at the blank's position, block positions counting on (no real token attends to it)."""
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    positions, blocks = batch["position_ids"][0].tolist()
    sep = int(batch["sep"][0])
    missing = sep + tgt_seq_length - len(ids)
    ids += [pad_id] * missing
    labels += [-100] * missing
    positions += [positions[sep]] * missing
    blocks += list(range(blocks[-1] + 1, blocks[-1] + 1 + missing))
    return {
        "text": ids,
        "target": [t if t != -100 else pad_id for t in labels],
        "loss_mask": [int(t != -100) for t in labels],
        "position_id": [positions, blocks],
        "attention_mask": sep,
    }


def test_sources_and_training_inputs(shared_dir, golden, reference):
    _, tokenizer = reference
    task, examples = examples_of(shared_dir, golden)
    for case, example in examples:
        assert example.source == case["source_text"]
        sample = seq2seq.training_sample(tokenizer, example, task)
        batch = seq2seq.collate([sample], tokenizer.pad_token_id)
        built = original_training_layout(batch, task.tgt_seq_length, tokenizer.pad_token_id)
        for key, value in built.items():
            assert value == case["train"][key], (case["id"], key)


def test_evaluation_input(shared_dir, golden, reference):
    _, tokenizer = reference
    task, examples = examples_of(shared_dir, golden)
    for case, example in examples:
        source = seq2seq.source_input(tokenizer, example, task)
        batch = build_batch([Sample(source.part_a, [Block([tokenizer.sop_token_id], source.mask_position)])], pad_id=0)
        assert batch["input_ids"][0].tolist() == case["eval_input"]["text"]
        assert batch["position_ids"][0].tolist() == case["eval_input"]["position_id"]
        assert int(batch["sep"][0]) == case["eval_input"]["attention_mask"]


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_decoded_summaries_and_scores(shared_dir, golden, reference, mode):
    model, tokenizer = reference
    task, examples = examples_of(shared_dir, golden)
    beams = golden["settings"]["num_beams"] if mode == "beam" else golden["settings"]["greedy_num_beams"]
    options = task.generation_options(num_beams=beams)
    inputs = [seq2seq.source_input(tokenizer, e, task) for _, e in examples]
    generated = seq2seq.generate(model, tokenizer, inputs, options, batch_size=4)
    for (case, _), got in zip(examples, generated, strict=True):
        want = case[mode]
        assert got.token_ids == want["hypothesis"], case["id"]
        assert [t for t in got.token_ids if t not in (0, tokenizer.eop_token_id)] == want["ids"]
        assert got.score == pytest.approx(want["score"], abs=1e-4)
        assert got.stopped == want["ended_with_eop"]


def test_cli_reproduces_beam_summaries(shared_dir, golden, tmp_path):
    """``torchglm evaluate seq2seq`` on the same lines writes the same ids and scores."""
    from torchglm.cli import main

    settings = golden["settings"]
    lines = (shared_dir / "data" / "xsum" / "test1000.jsonl").read_text().splitlines()
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(lines[c["line"]] + "\n" for c in golden["cases"]))
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate", "seq2seq", "--task", "xsum", "--data", str(data), "--output", str(out),
            "--model", str(shared_dir / "golden" / "glm-ref-fill"),
            "--src-seq-length", str(settings["src_seq_length"]), "--tgt-seq-length", str(settings["tgt_seq_length"]),
            "--num-beams", str(settings["num_beams"]), "--min-new-tokens", str(settings["min_tgt_length"]),
            "--length-penalty", str(settings["length_penalty"]),
            "--no-repeat-ngram-size", str(settings["no_repeat_ngram_size"]), "--batch-size", "6", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for case, row in zip(golden["cases"], rows, strict=True):
        assert row["token_ids"] == case["beam"]["hypothesis"]
        assert row["score"] == pytest.approx(case["beam"]["score"], abs=1e-4)
    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == len(golden["cases"]) and set(results["rouge"]) == set(seq2seq.ROUGE_TYPES)


def test_field_names_are_configurable_on_the_command_line(shared_dir, golden, tmp_path, capsys):
    from torchglm.cli import main

    case = golden["cases"][0]
    data = tmp_path / "renamed.jsonl"
    data.write_text(json.dumps({"article": case["document"], "gist": case["summary"]}) + "\n")
    args = ["evaluate", "seq2seq", "--task", "xsum", "--data", str(data), "--output", str(tmp_path / "out"),
            "--model", str(shared_dir / "golden" / "glm-ref-fill"), "--src-seq-length", "96", "--tgt-seq-length",
            "16", "--num-beams", "3", "--min-new-tokens", "3", "--no-progress"]  # fmt: skip
    assert main(args) == 2 and 'field "document" is missing' in capsys.readouterr().err
    assert main([*args, "--source-field", "article", "--target-field", "gist"]) == 0
    row = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["token_ids"] == case["beam"]["hypothesis"]


def test_summarize_prints_one_summary_per_document(shared_dir, golden, reference, tmp_path, capsys):
    from torchglm.cli import main

    model, tokenizer = reference
    documents = [case["source_text"] for case in golden["cases"][:3]]
    path = tmp_path / "docs.txt"
    path.write_text("".join(d + "\n" for d in documents))
    folder = str(shared_dir / "golden" / "glm-ref-fill")
    args = ["summarize", str(path), "--model", folder, "--num-beams", "2", "--max-new-tokens", "6", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    task = seq2seq.get_task("xsum", src_seq_length=model.config.max_sequence_length - 1)
    inputs = [
        seq2seq.source_input(tokenizer, seq2seq.Seq2SeqExample(d, "", str(i)), task) for i, d in enumerate(documents)
    ]
    want = seq2seq.generate(model, tokenizer, inputs, task.generation_options(num_beams=2, max_new_tokens=6))
    assert printed == [g.text for g in want]
