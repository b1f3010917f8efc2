"""Training stages across processes: `compute.num_processes > 1` re-runs the stage under `accelerate launch`.

The stage's own process becomes the launcher (it waits, and cleans up on failure as any stage does); each of the
N processes runs the stage as usual. Trainer-based stages (sft, cot_distill, cot_sft, dpo, codi) get DDP from
transformers' Trainer, which reads the launcher's environment; the custom loops (markovian, transplant) split their
batch across processes and all-reduce gradients through `accelerate`. Every process starts from the same seed, so
adapters are initialised alike, and only the main process writes outputs, logs and MLflow runs.

On a machine without GPUs the processes talk over gloo (accelerate's MULTI_CPU), which is how the tests prove that
2 processes give the weights of 1 process with the same global batch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from typing import Sequence

from cotlab.config import ComputeConfig, ConfigError


def launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun (they set LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(compute: ComputeConfig, argv: Sequence[str]) -> list[str]:
    """`accelerate launch` running this stage's script with its arguments on compute.num_processes processes."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        raise ConfigError("compute.num_processes: > 1 needs the `accelerate` command (pip install accelerate)")
    port = compute.main_process_port or free_port()
    cmd = [accelerate, "launch", "--num_processes", str(compute.num_processes), "--main_process_port", str(port)]
    if compute.accelerate_config:
        if not os.path.isfile(compute.accelerate_config):
            raise ConfigError(f"compute.accelerate_config: {compute.accelerate_config!r} is not a file (write one "
                              "with `accelerate config --config_file <path>`)")
        cmd += ["--config_file", compute.accelerate_config]
    else:
        # Plain DDP on one machine. accelerate names it multi_gpu; without GPUs it runs MULTI_CPU over gloo.
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + [argv[0], *argv[1:]]


def relaunch(compute: ComputeConfig, argv: Sequence[str]) -> int:
    """Run the stage under accelerate and wait: the exit status of the processes."""
    env = {**os.environ}
    # Threads per process: the cores shared out, unless the user chose (accelerate would warn and pick its own).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // compute.num_processes)))
    return subprocess.run(launch_command(compute, argv), env=env).returncode


def pin_device() -> None:
    """In a launched process on a GPU machine: this process's GPU becomes "cuda", so `model.to("cuda")` lands on it.
    Torch is imported only then: a stage without model work never loads it."""
    if not launched():
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


class Processes:
    """The processes of a custom training loop: which share of a batch is this one's, and gradients summed or
    averaged over all of them. With one process every method is the identity, so single-process runs are unchanged."""

    def __init__(self):
        self.world, self.rank = world_size(), rank()
        self.accelerator = None
        if self.world > 1:
            import torch
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())

    def share(self, items: Sequence, what: str) -> list:
        """This process's contiguous share of `items`; the shares are equal, so a mean of per-process means is the
        mean over the whole batch."""
        if len(items) % self.world:
            raise ConfigError(f"{what}: {len(items)} is not a multiple of compute.num_processes ({self.world}); "
                              "each process takes an equal share of a batch")
        size = len(items) // self.world
        return list(items[self.rank * size:(self.rank + 1) * size])

    def reduce(self, value, op: str = "mean"):
        """A tensor (or a float) combined over processes: "mean", "sum" or "max"."""
        if self.accelerator is None:
            return value
        import torch

        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device)
        if op == "max":
            out = self.accelerator.gather(tensor.reshape(1)).max()
        else:
            out = self.accelerator.reduce(tensor.clone(), reduction=op)
        return out if isinstance(value, torch.Tensor) else float(out)

    def gather(self, tensor):
        """Every process's `tensor`, concatenated in process order (the tensor itself with one process)."""
        return tensor if self.accelerator is None else self.accelerator.gather(tensor.contiguous())

    def reduce_gradients(self, parameters, op: str = "mean") -> None:
        """After backward: every process holds the gradient combined over all of them (one flat all-reduce)."""
        if self.accelerator is None:
            return
        import torch

        parameters = list(parameters)
        # A parameter without a gradient here (nothing kept on this process) still takes part, as zeros: every
        # process must send the same tensor.
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
        flat = self.accelerator.reduce(flat, reduction=op)
        offset = 0
        for p in parameters:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
