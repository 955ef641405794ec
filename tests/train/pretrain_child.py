"""``torchglm pretrain`` as a test subprocess, with optional crash injection (SIGKILL, no clean-up of any kind).

python pretrain_child.py --config job.yaml [pretrain options]
TORCHGLM_TEST_KILL_AFTER_STEP=7  ...   killed right after optimizer step 7
TORCHGLM_TEST_KILL_IN_SAVE=6     ...   killed while saving checkpoint 6 (files written, folder not renamed)
"""

from __future__ import annotations

import os
import signal
import sys

from torchglm import cli
from torchglm.train import checkpoint, trainer


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_faults() -> None:
    after_step = os.environ.get("TORCHGLM_TEST_KILL_AFTER_STEP")
    if after_step:
        original_step = trainer.Trainer.train_step

        def train_step(self):
            record = original_step(self)
            if self.step == int(after_step):
                _kill()
            return record

        trainer.Trainer.train_step = train_step
    in_save = os.environ.get("TORCHGLM_TEST_KILL_IN_SAVE")
    if in_save:
        original_rename = os.rename

        def rename(source, target, *args, **kwargs):
            if str(source).endswith(f"step-{int(in_save):08d}{checkpoint.PARTIAL_SUFFIX}"):
                _kill()
            return original_rename(source, target, *args, **kwargs)

        checkpoint.os.rename = rename


if __name__ == "__main__":
    install_faults()
    sys.exit(cli.main(["pretrain", *sys.argv[1:]]))
