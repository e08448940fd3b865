"""2 CPU processes for the DDP tests: the launch (torch.distributed.run), the scripts' shutdown."""

import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from fresh_python import one_thread_env


def run_on_two_processes(script: Path, *args: str, timeout: int = 300) -> None:
    """Run ``script args`` on 2 processes of one thread each; fail with its stderr if it fails."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *args,
    ]
    done = subprocess.run(
        command,
        cwd=script.parent,
        env=one_thread_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def shut_down(accelerator: Accelerator) -> None:
    """End a script's run cleanly: wait for every rank, end training, free the process group."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if dist.is_initialized():
        dist.destroy_process_group()
