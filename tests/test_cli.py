"""The ``torchglm`` entry point: help and version without importing torch, one error boundary, --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchglm.cli import main


def test_help_and_version_answer_without_importing_torch():
    code = (
        "import sys, torchglm_cli\n"
        "assert torchglm_cli.main(['--help']) == 0 and torchglm_cli.main(['--version']) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy imports'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "commands:" in result.stdout and "evaluate" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("torchglm 0.")


def test_unknown_command_is_exit_status_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_user_errors_are_one_line_and_debug_shows_the_traceback(capsys, tmp_path):
    argv = ["evaluate", "lambada", "--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("torchglm evaluate: error: --data")
    from torchglm.errors import InputError

    with pytest.raises(InputError, match="no such file"):
        main([*argv, "--debug"])


def test_configuration_and_checkpoint_errors_are_user_errors():
    from torchglm.errors import InputError
    from torchglm.train.checkpoint import CheckpointError
    from torchglm.train.config import ConfigError

    assert issubclass(ConfigError, InputError) and issubclass(CheckpointError, InputError)
