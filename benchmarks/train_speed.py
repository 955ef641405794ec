"""Training throughput and MFU of torchglm's trainer, against transformers' GPT-2 of the same dimensions and
against torchglm's previous objective (the output layer at every position).

One optimizer step = forward + backward + gradient clipping + fused AdamW, through ``torchglm.train.Trainer``
exactly as ``torchglm pretrain`` runs it (bf16 = autocast with fp32 master weights). MFU is model FLOPs per second
(``torchglm.model.training_flops``: ``6 N_blocks + 12 L H S`` per token and ``6 V H`` per predicted token, the
output layer counted where it is useful: at the targets for GLM, everywhere for GPT-2) divided by the matmul
peak of the same dtype measured in the same run (the fastest product of two large squares, see
``torchglm.ops.peak.measure_matmul_peak``, timed after every round of steps; the median counts). GLM batches are
blank-infilling shaped (part A 85%, part B with targets 15%); GPT-2 predicts every token. "glm (all positions)"
is the same model with the previous objective, which projected every position onto the vocabulary and then
kept the targets: the ratio of the two step times is what projecting only the targets saves. A peer whose dtype
this CPU has no GEMM for is skipped (torch's reference kernel would take tens of minutes per step).

    python benchmarks/train_speed.py                       # CPU: base at seq 512, fp32 and bf16
    python benchmarks/train_speed.py --sizes tiny --seq 128 --repeats 1   # a smoke run
    python benchmarks/train_speed.py --sizes large 2b      # GPU: the default there
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from _machine import describe, has_half_gemm
from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.layout import model_inputs
from torchglm.losses import BlankInfillingLoss, LossSums
from torchglm.model import training_flops
from torchglm.ops.peak import measure_matmul_peak
from torchglm.train.config import job_config_from_dict
from torchglm.train.logging import MetricLogger
from torchglm.train.optim import build_optimizer, build_scheduler
from torchglm.train.parallel import World, pick_device
from torchglm.train.recipe import trainer_config
from torchglm.train.trainer import Trainer


def glm_batch(batch: int, seq: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A blank-infilling shaped batch: part A (85%) bidirectional, part B (15%) causal with targets."""
    sep = int(seq * 0.85)
    ids = torch.randint(1000, vocab - 100, (batch, seq), generator=generator)
    positions = torch.zeros(batch, 2, seq, dtype=torch.long)
    positions[:, 0, :sep] = torch.arange(sep)
    positions[:, 0, sep:] = torch.randint(0, sep, (seq - sep,), generator=generator)
    positions[:, 1, sep:] = torch.arange(1, seq - sep + 1) % 8 + 1
    labels = torch.full((batch, seq), -100)
    labels[:, sep:] = ids[:, sep:]
    return {"input_ids": ids, "position_ids": positions, "sep": torch.full((batch,), sep), "labels": labels,
            "blank_mode": torch.zeros(batch, dtype=torch.long)}  # fmt: skip


class AllPositionsLoss(BlankInfillingLoss):
    """The previous objective: logits at every position, then the cross-entropy at the targets."""

    def __call__(self, model, batch):
        labels = batch["labels"]
        targets = labels != -100
        logits = model(**model_inputs(batch), use_cache=False).logits  # [B, L, V]
        losses = F.cross_entropy(logits[targets].float(), labels[targets], reduction="sum")
        return LossSums(total=losses, count=targets.sum(), tokens=labels.numel())


class CausalLM:
    """GPT-2's objective: every next token."""

    def count(self, batch):
        return batch["input_ids"][:, 1:].numel()

    def __call__(self, model, batch):
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits[:, :-1]
        losses = F.cross_entropy(logits.float().flatten(0, 1), batch["input_ids"][:, 1:].flatten(), reduction="sum")
        return LossSums(total=losses, count=self.count(batch), tokens=batch["input_ids"].numel())


def step_flops(flops, batch: dict, gpt2: bool) -> float:
    """Model FLOPs of one step: every token, plus the output layer at the predicted tokens."""
    tokens = batch["input_ids"].numel()
    predicted = tokens if gpt2 else int((batch["labels"] != -100).sum())
    return tokens * flops.per_token + predicted * flops.per_prediction


def gpt2_like(config: GLMConfig) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=config.num_layers, n_embd=config.hidden_size, n_head=config.num_attention_heads,
            n_positions=config.max_sequence_length, vocab_size=config.vocab_size, attn_implementation="sdpa",
            bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip


def make_trainer(model, objective, batches, device, precision: str, folder: str, steps: int) -> Trainer:
    """The trainer ``torchglm pretrain`` would build for this model (AdamW, schedule, clipping, autocast)."""
    size = len(batches[0]["labels"])
    job = job_config_from_dict(
        {
            "train": {"output_dir": folder, "steps": steps, "global_batch_size": size, "micro_batch_size": size,
                      "precision": precision},
            "logging": {"progress_bar": False, "tensorboard": False},
        }
    )  # fmt: skip
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.schedule, job.train.steps)
    metrics = MetricLogger(folder, job.train.steps, False)
    trainer = Trainer(
        trainer_config(job), World(device=device), model, optimizer, scheduler, objective, None, None, metrics,
        autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
    )  # fmt: skip
    trainer._batches = iter(batches * (steps + 1))
    return trainer


def paired_step_seconds(trainers, device, repeats: int, probe) -> tuple[list[list[float]], list[float]]:
    """Wall time of ``repeats`` optimizer steps of each trainer, alternating them so that load changes on a
    shared machine hit all alike (one warm-up step each first), and the ``probe()`` (matmul peak) of each round,
    measured between the steps for the same reason."""
    times, peaks = [[] for _ in trainers], []
    for round_ in range(repeats + 1):
        for trainer, bucket in zip(trainers, times, strict=True):
            _sync(device)
            start = time.perf_counter()
            trainer.train_step()
            _sync(device)
            if round_:
                bucket.append(time.perf_counter() - start)
        if round_:
            peaks.append(probe())
    return times, peaks


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--sizes", nargs="+", default=["large", "2b"] if on_gpu else ["base"])
    parser.add_argument("--precisions", nargs="+", default=["bf16"] if on_gpu else ["fp32", "bf16"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8 if on_gpu else 4, help="sequences per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-peer", action="store_true", help="skip the GPT-2 peer")
    parser.add_argument("--no-previous", action="store_true", help="skip the all-positions objective")
    parser.add_argument(
        "--max-step-seconds", type=float, default=60, help="skip a precision whose step would take longer"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device("auto")
    print(describe())
    print(f"torch {torch.__version__}, {device}, {args.threads} threads, seq {args.seq}, {args.batch} sequences/step")
    print(f"{'model':26} {'dtype':5} {'peak TF/s':>9} {'s/step':>8} {'tokens/s':>9} {'MFU':>6}   (median of the steps)")
    for size in args.sizes:
        config = GLMConfig.from_preset(size, max_sequence_length=max(args.seq, 512))
        flops = training_flops(config, args.seq)
        generator = torch.Generator().manual_seed(0)
        batches = [glm_batch(args.batch, args.seq, config.vocab_size, generator)]
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peak = measure_matmul_peak(dtype, device)  # a first figure, for the step-time estimate
            estimate = step_flops(flops, batches[0], gpt2=True) / (peak * 1e12)
            if estimate > args.max_step_seconds:
                print(
                    f"glm-{size:21} {precision:5} {peak:9.3f}  skipped: >= {estimate:.0f} s/step even at the "
                    f"measured peak (--max-step-seconds {args.max_step_seconds:.0f}; try --batch 1 --seq 128)"
                )
                continue
            torch.manual_seed(0)
            glm = GLMForConditionalGeneration(config)
            previous = GLMForConditionalGeneration(config)
            previous.load_state_dict(glm.state_dict())
            models = [(f"glm-{size}", glm, BlankInfillingLoss(), False)]
            if not args.no_previous:
                models.append((f"glm-{size} (all positions)", previous, AllPositionsLoss(), False))
            if args.no_peer:
                pass
            elif not has_half_gemm(dtype, device.type):
                print(
                    f"gpt2-{size}-dims            {precision:5} skipped: this CPU has no {precision} GEMM and GPT-2 "
                    "would multiply with torch's reference kernel (0.3-20 GFLOP/s): no fair ratio"
                )
            else:
                models.append((f"gpt2-{size}-dims", gpt2_like(config), CausalLM(), True))
            with tempfile.TemporaryDirectory() as folder:
                trainers = [
                    make_trainer(model.to(device).train(), objective, batches, device, precision, folder, args.repeats)
                    for _, model, objective, _ in models
                ]
                times, peaks = paired_step_seconds(
                    trainers, device, args.repeats, functools.partial(measure_matmul_peak, dtype, device)
                )
                peak = statistics.median(peaks)
                medians = {}
                for (name, _, _, is_gpt2), trainer, seconds in zip(models, trainers, times, strict=True):
                    trainer.metrics.close()
                    median = medians[name] = statistics.median(seconds)
                    rate = args.batch * args.seq / median
                    mfu = step_flops(flops, batches[0], is_gpt2) / median / (peak * 1e12)
                    print(
                        f"{name:26} {precision:5} {peak:9.3f} {median:8.3f} {rate:9.1f} {mfu:6.1%}   "
                        f"steps: {', '.join(f'{t:.2f}' for t in seconds)}",
                        flush=True,
                    )
                if not args.no_previous:
                    ratio = medians[f"glm-{size}"] / medians[f"glm-{size} (all positions)"]
                    print(f"  step time, targets only / all positions: {ratio:.3f} ({1 - ratio:.1%} less)", flush=True)
            del models, trainers


if __name__ == "__main__":
    main()
