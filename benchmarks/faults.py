"""Fault injection: ``torchglm pretrain`` killed with SIGKILL at random moments, resumed each time, must end with the
losses and weights of a run that was never interrupted; and again with the newest checkpoint damaged after a kill.

One tiny run (2 layers x 64 on the synthetic shards of the tests, 24 steps, a checkpoint every 2 steps, one CPU
thread) is trained uninterrupted as the reference. Then the same job is started with ``--resume`` over and over:
each start is killed from outside with SIGKILL after a random delay (anywhere in start-up, a step, a checkpoint
save or its rename), ``--kills`` times, then left to finish. Then, ``--damage`` times: start, kill, damage the
newest complete checkpoint (a shard truncated, or one bit flipped in it), and resume; the damaged checkpoint must be
skipped with a warning and the run must still finish. Every step's loss (the log keeps the last record of each
step) and every final weight must equal the reference bit for bit.

    python benchmarks/faults.py                    # 10 kills, 2 damaged checkpoints (~3 minutes on 2 cores)
    python benchmarks/faults.py --kills 20 --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "train"))

from conftest import CHILD, child_env, tiny_job, write_job, write_shards  # noqa: E402

STEPS = 100


def command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, str(CHILD), "--config", str(config), *(["--resume"] if resume else [])]


def run_to_end(config: Path, resume: bool) -> subprocess.CompletedProcess:
    done = subprocess.run(command(config, resume), env=child_env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def start_and_kill(config: Path, delay: float) -> bool:
    """Start with --resume and SIGKILL it after ``delay`` seconds; False if it finished first."""
    process = subprocess.Popen(
        command(config, True), env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "event" not in record:
            out[record["step"]] = record["loss"]
    return out


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def newest_checkpoint(run: Path) -> Path | None:
    done = [p for p in (run / "checkpoints").glob("step-*") if (p / "trainer.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def damage(checkpoint: Path, rng: random.Random) -> str:
    shard = max(checkpoint.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    if rng.random() < 0.5:
        shard.write_bytes(bytes(data[: rng.randrange(1, len(data))]))
        return f"truncated {shard.name} of {checkpoint.name}"
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    shard.write_bytes(bytes(data))
    return f"flipped a bit of {shard.name} of {checkpoint.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--damage", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shards = {"train": write_shards(root / "train", 300, 0), "eval": write_shards(root / "eval", 40, 1)}

        def job(run: Path) -> Path:
            spec = tiny_job(shards, run, train={"steps": STEPS}, checkpoint={"interval": 2, "keep_last": 2,
                            "export_final": True})  # fmt: skip
            return write_job(root / f"{run.name}.yaml", spec)

        started = time.time()
        reference = root / "reference"
        run_to_end(job(reference), resume=False)
        total = time.time() - started
        first = json.loads((reference / "log.jsonl").read_text().splitlines()[0])["time"]
        startup = first - started
        print(
            f"uninterrupted run: {total:.1f} s ({startup:.1f} s to the first step), {STEPS} steps, a checkpoint every 2"
        )
        # each start is killed after its start-up (a resume takes longer: checkpoint checks) and before a tenth of
        # the training time more
        delays = lambda: rng.uniform(startup * 1.1, startup * 1.3 + 0.1 * (total - startup))  # noqa: E731

        faulty = root / "faulty"
        config = job(faulty)
        kills = 0
        while kills < args.kills:
            if start_and_kill(config, delays()):
                kills += 1
                newest = newest_checkpoint(faulty)
                partial = sorted(p.name for p in (faulty / "checkpoints").glob("*.partial"))
                print(f"kill {kills}: newest checkpoint {newest.name if newest else 'none'}"
                      + (f", interrupted save {partial[0]}" if partial else ""))  # fmt: skip
            else:
                print("finished before the kill: starting over")
                break
        for n in range(args.damage):
            if start_and_kill(config, delays()):
                newest = newest_checkpoint(faulty)
                if newest is not None:
                    print(f"damage {n + 1}: {damage(newest, rng)}")
        resumed = run_to_end(config, resume=True)
        skipped = [line for line in resumed.stderr.splitlines() if "skipping" in line or "ignoring" in line]
        for line in skipped:
            print("  resume:", line.split("WARNING", 1)[-1].strip()[:160])

        want, got = losses(reference), losses(faulty)
        same_losses = want == got
        w_ref, w_run = weights(reference), weights(faulty)
        same_weights = w_ref.keys() == w_run.keys() and all((w_ref[k] == w_run[k]).all() for k in w_ref)
        print(f"losses of all {len(want)} steps identical: {same_losses}")
        print(f"final weights identical: {same_weights}")
        if not (same_losses and same_weights):
            diff = {s: (want.get(s), got.get(s)) for s in sorted(set(want) | set(got)) if want.get(s) != got.get(s)}
            print("differences:", diff)
            raise SystemExit(1)


if __name__ == "__main__":
    main()
