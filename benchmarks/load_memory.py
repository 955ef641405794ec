"""Peak memory of loading a ~1B-parameter GLM with a dtype conversion, per source format (issue 16).

Writes random fp16 checkpoints once (tensor by tensor from meta-device shapes, never a whole fp32 model):
torchglm's single ``model.safetensors``, the same sharded (``model-0000x-of-0000n.safetensors`` + index), and the
released format (a bare fp16 ``pytorch_model.bin``). Then loads each in a fresh process with
``GLMForConditionalGeneration.from_pretrained(folder, dtype=...)`` and prints the process's high-water mark
(``VmHWM``) over its resident set after imports, as a ratio to the loaded weights' size. Target: <= 1.3x for every
format and dtype. ``--peer`` adds the same loads through plain ``transformers`` (``PreTrainedModel.from_pretrained``
without torchglm's lean loader), the path every transformers user gets.

    python benchmarks/load_memory.py                      # 1.1B parameters, fp16 -> bf16 and fp16 -> fp32
    python benchmarks/load_memory.py --layers 4 --keep    # smaller; keep the files for another run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("safetensors", "sharded", "released-bin")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_checkpoints(root: Path, layers: int, hidden: int, heads: int, vocab: int) -> int:
    """The three formats of one random fp16 model under ``root``; returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    from torchglm import GLMConfig, GLMForConditionalGeneration

    config = GLMConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, vocab_size=vocab, max_sequence_length=1024
    )
    config.dtype = "float16"
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GLMForConditionalGeneration(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():  # drawn in fp32 one tensor at a time, kept in fp16
        state[name] = (torch.rand(shape, generator=generator, dtype=torch.float32) * 0.04 - 0.02).half()
    count = sum(t.numel() for t in state.values())
    state.pop("lm_head.weight", None)  # tied to the word embeddings, never written
    for fmt in FORMATS:
        (root / fmt).mkdir(parents=True, exist_ok=True)
        config.save_pretrained(root / fmt)
    save_file(state, root / "safetensors" / "model.safetensors", metadata={"format": "pt"})
    torch.save({name[len("glm.") :]: t for name, t in state.items()}, root / "released-bin" / "pytorch_model.bin")
    _write_shards(state, root / "sharded", shard_bytes=max(1, count * 2 // 4))
    return count


def _write_shards(state: dict, folder: Path, shard_bytes: int) -> None:
    """transformers' sharded layout by hand, so the files exist before any torchglm save code is trusted."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        if current and size + tensor.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += tensor.nbytes
    shards.append(current)
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.nbytes for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def measure(folder: str, dtype: str, peer: bool) -> dict:
    """Run in a child process: load and report the peak over the post-import baseline."""
    import torch
    import transformers

    from torchglm import GLMForConditionalGeneration

    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    if peer:  # transformers' own loader, bypassing torchglm's override
        model = transformers.PreTrainedModel.from_pretrained.__func__(
            GLMForConditionalGeneration, folder, dtype=getattr(torch, dtype)
        )
    else:
        model = GLMForConditionalGeneration.from_pretrained(folder, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return {"peak_kib": peak - baseline, "weights_bytes": weights, "seconds": seconds, "dtypes": dtypes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--peer", action="store_true", help="also load through plain transformers")
    parser.add_argument("--root", help="folder for the checkpoints (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "DTYPE", "PEER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, dtype, peer = args.child
        print(json.dumps(measure(folder, dtype, peer == "1")))
        return

    from _machine import describe

    print(describe())
    root = Path(args.root or tempfile.mkdtemp(prefix="glm-load-"))
    try:
        if not (root / "sharded" / "model.safetensors.index.json").is_file():
            start = time.perf_counter()
            count = write_checkpoints(root, args.layers, args.hidden, args.heads, args.vocab)
            seconds = time.perf_counter() - start
            print(f"wrote {count / 1e9:.2f}B-parameter fp16 checkpoints to {root} in {seconds:.0f} s")
        shards = len(list((root / "sharded").glob("model-*.safetensors")))
        print(f"formats: safetensors (1 file), sharded ({shards} files), released-bin (fp16 pytorch_model.bin)")
        print(f"{'format':<14}{'loader':<14}{'fp16 ->':<10}{'weights GB':>11}{'peak GB':>9}{'ratio':>7}{'s':>6}")
        worst = 0.0
        for fmt in FORMATS:
            for dtype in args.dtypes:
                for peer in (False, True) if args.peer else (False,):
                    command = [sys.executable, __file__, "--child", str(root / fmt), dtype, "1" if peer else "0"]
                    out = subprocess.run(command, capture_output=True, text=True, check=False)
                    if out.returncode:
                        print(f"{fmt:<14}{'transformers' if peer else 'torchglm':<14}{dtype:<10} failed:")
                        print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(no output)")
                        continue
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    ratio = row["peak_kib"] * 1024 / row["weights_bytes"]
                    if not peer:
                        worst = max(worst, ratio)
                    print(
                        f"{fmt:<14}{'transformers' if peer else 'torchglm':<14}{dtype:<10}"
                        f"{row['weights_bytes'] / 1e9:>11.2f}{row['peak_kib'] * 1024 / 1e9:>9.2f}{ratio:>6.2f}x"
                        f"{row['seconds']:>6.1f}"
                    )
        print(f"worst torchglm ratio {worst:.2f}x (target <= 1.30x): {'met' if worst <= 1.3 else 'NOT met'}")
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
