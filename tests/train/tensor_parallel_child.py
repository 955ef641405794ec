"""Tensor parallelism under ``torchrun`` (gloo, CPU): one tiny GLM run plainly and split over the ranks.

    torchrun --nproc-per-node 2 tensor_parallel_child.py OUT_DIR

Every rank builds the same plain model (same seed) and the tensor-parallel one (the plan of
``GLMPreTrainedModel.tensor_parallel_plan``, weights regrouped by ``tensor_parallel_layout`` and broadcast from
rank 0), runs a forward and backward pass and a cached greedy fill through both, and writes what it saw to
``OUT_DIR/rank-R.json``: the largest differences, the heads its attention ran, its KV cache's key shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.generation import DecodingState, fill_ids
from torchglm.model import tensor_parallel_layout
from torchglm.train.parallel import (
    apply_tp,
    close_distributed,
    init_distributed,
    load_full_state,
    tensor_parallel_styles,
)

HEADS, TP = 4, 2
BLANKS, SOP, EOP = [92, 93, 94], 90, 91


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    world = init_distributed("cpu", TP)
    config = GLMConfig(
        vocab_size=97, hidden_size=32, num_layers=2, num_attention_heads=HEADS, max_sequence_length=64,
        embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0,
        initializer_range=0.3,  # peaked predictions: fills that vary from token to token
    )  # fmt: skip
    torch.manual_seed(0)
    plain = GLMForConditionalGeneration(config).eval()
    state = tensor_parallel_layout(plain.state_dict(), HEADS, TP) if world.is_main else None
    with torch.device("meta"):
        split = GLMForConditionalGeneration(config)
    apply_tp(split, world.mesh["tp"], tensor_parallel_styles(split.tensor_parallel_plan))  # no FSDP: inference
    load_full_state(split, state, world)
    split.eval()

    heads_run = []
    for layer in split.glm.transformer.layers:
        layer.attention.query_key_value.register_forward_hook(
            lambda module, args, output: heads_run.append(output.shape[-1] // (3 * config.hidden_size // HEADS))
        )

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 80, (3, 12), generator=generator)
    ids[:, 4] = BLANKS[0]
    positions = torch.stack([torch.arange(12), torch.zeros(12, dtype=torch.long)]).expand(3, 2, 12)
    sep = torch.tensor([8, 10, 12])
    labels = torch.randint(0, 97, (3, 12), generator=generator)
    report = {}

    # forward and backward
    outputs = {}
    for name, model in (("plain", plain), ("split", split)):
        model.zero_grad()
        out = model(ids, positions, sep=sep, labels=labels, use_cache=False)
        out.loss.backward()
        grads = {n: full(p.grad) for n, p in model.named_parameters()}
        outputs[name] = (out.logits.detach(), float(out.loss), grads)
    grads = tensor_parallel_layout(outputs["split"][2], HEADS, TP, inverse=True)
    report["logits"] = float((outputs["plain"][0] - outputs["split"][0]).abs().max())
    report["loss"] = abs(outputs["plain"][1] - outputs["split"][1])
    report["grads"] = max(float((outputs["plain"][2][n] - grads[n]).abs().max()) for n in grads)
    report["heads_run"] = sorted(set(heads_run))

    # the KV cache of each rank holds its heads only
    with torch.inference_mode():
        state = DecodingState(split, ids.tolist(), pad_id=0, capacity=4)
        report["cache_keys"] = list(state.cache.layers[0].keys.shape)
        report["cache_values"] = list(state.cache.layers[0].values.shape)
        contexts = [row[: 8 + i] for i, row in enumerate(ids.tolist())]
        options = dict(blank_ids=BLANKS, sop_id=SOP, stop_ids=[EOP, 0], pad_id=0, max_new_tokens=6)
        report["fill_plain"] = [[b.token_ids for b in r] for r in fill_ids(plain, contexts, **options)]
        report["fill_split"] = [[b.token_ids for b in r] for r in fill_ids(split, contexts, **options)]
        beams = {name: fill_ids(model, contexts, num_beams=3, **options) for name, model in [("plain", plain),
                 ("split", split)]}  # fmt: skip
        report["beam_plain"], report["beam_split"] = ([[b.token_ids for b in r] for r in beams[k]] for k in beams)
        pairs = zip(*(sum(beams[k], []) for k in beams), strict=True)
        report["beam_score_difference"] = max(abs(a.score - b.score) for a, b in pairs)
    (folder / f"rank-{world.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
