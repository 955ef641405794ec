"""Tensor-parallel inference under ``torchrun`` (gloo, CPU): model folders loaded whole and split over the ranks.

    torchrun --nproc-per-node 2 tensor_parallel_inference_child.py OUT_DIR FOLDER [GOLDEN_FOLDER]

Every rank loads FOLDER twice: whole (``from_pretrained``, the one-process reference) and split
(``load_tensor_parallel``, reading only its shard), and writes to ``OUT_DIR/rank-R.json`` the largest logit
difference, both greedy fills, its parameters' local shapes, the bytes it read and its KV cache's key shape. With
GOLDEN_FOLDER (the released-format ``glm-ref-fill``), also the golden cases' fills and transformers' ``generate``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from torchglm import GLMForConditionalGeneration
from torchglm.generation import DecodingState, fill_ids
from torchglm.train.parallel import close_distributed, init_distributed, load_tensor_parallel

TP = 2
BLANKS, SOP, EOP = [92, 93, 94], 90, 91


def tiny_folder_report(folder: Path, mesh) -> dict:
    plain = GLMForConditionalGeneration.from_pretrained(folder).eval()
    split, info = load_tensor_parallel(folder, mesh, output_loading_info=True)
    report = {"bytes_read": info["bytes_read"]}
    report["local_shapes"] = {
        name: list(p.to_local().shape if hasattr(p, "to_local") else p.shape) for name, p in split.named_parameters()
    }
    report["local_qkv"] = split.glm.transformer.layers[0].attention.query_key_value.weight.to_local().tolist()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 80, (3, 12), generator=generator)
    ids[:, 4] = BLANKS[0]
    positions = torch.stack([torch.arange(12), torch.zeros(12, dtype=torch.long)]).expand(3, 2, 12)
    with torch.inference_mode():
        sep = torch.tensor([8, 10, 12])
        difference = plain(ids, positions, sep=sep).logits - split(ids, positions, sep=sep).logits
        report["logits"] = float(difference.abs().max())
        state = DecodingState(split, ids.tolist(), pad_id=0, capacity=4)
        report["cache_keys"] = list(state.cache.layers[0].keys.shape)
        contexts = [row[: 8 + i] for i, row in enumerate(ids.tolist())]
        options = dict(blank_ids=BLANKS, sop_id=SOP, stop_ids=[EOP, 0], pad_id=0, max_new_tokens=6)
        for name, model in (("plain", plain), ("split", split)):
            report[f"fill_{name}"] = [[b.token_ids for b in r] for r in fill_ids(model, contexts, **options)]
    return report


def golden_report(folder: Path, mesh) -> dict:
    from torchglm.generation import GenerationOptions, fill
    from torchglm.tokenization import GLMTokenizer

    tokenizer = GLMTokenizer.from_pretrained(folder)
    plain = GLMForConditionalGeneration.from_pretrained(folder).eval()
    split = load_tensor_parallel(folder, mesh)
    cases = json.loads((folder / "fill_cases.json").read_text())["cases"]
    texts = [case["text"] for case in cases]
    report = {}
    with torch.inference_mode():
        options = GenerationOptions(max_new_tokens=8)
        report["golden_fills"] = [
            [b.token_ids for b in r.blanks] for r in fill(split, tokenizer, texts, options=options)
        ]
        padded = tokenizer(texts[1:2], return_tensors="pt")
        inputs = tokenizer.build_inputs_for_generation(padded, max_gen_length=8)
        for name, model in (("plain", plain), ("split", split)):
            out = model.generate(**inputs, max_new_tokens=6, eos_token_id=tokenizer.eop_token_id, do_sample=False)
            report[f"generate_{name}"] = out.tolist()
        ids = torch.tensor([case["context_ids"] for case in cases[1:2]])
        report["golden_logits"] = float((plain(ids).logits - split(ids).logits).abs().max())
    return report


def main(out: Path, folder: Path, golden: Path | None) -> None:
    torch.set_num_threads(1)
    world = init_distributed("cpu", TP)
    report = tiny_folder_report(folder, world.mesh["tp"])
    if golden is not None:
        report.update(golden_report(golden, world.mesh["tp"]))
    (out / f"rank-{world.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
