"""torch.distributed set-up for ``--launcher pytorch`` (torchrun) and ``--launcher slurm`` (srun).

The same code path runs on GPUs (NCCL, one process per GPU) and on CPUs (gloo), so multi-process
training is testable without GPUs. ``init_distributed`` reads the launcher's environment:

* torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
* SLURM: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODELIST`` (the first host becomes
  the master; ``MASTER_ADDR`` / ``MASTER_PORT`` in the environment win, else ``dist_params.port``, else 29500).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sr_arch.errors import LauncherError

LAUNCHERS = ('none', 'pytorch', 'slurm')
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None = None
    master_port: int | None = None


def _env_int(env: dict[str, str], key: str, launcher: str) -> int:
    value = env.get(key)
    if value is None:
        hint = ('start it with torchrun --nproc_per_node=N train.py ... --launcher pytorch' if launcher == 'pytorch'
                else 'start it with srun inside an sbatch/salloc allocation')
        raise LauncherError(f'--launcher {launcher}: environment variable {key} is not set ({hint})')
    try:
        return int(value)
    except ValueError as err:
        raise LauncherError(f'--launcher {launcher}: {key}={value!r} is not an integer') from err


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03'. Uses scontrol when available."""
    if shutil.which('scontrol'):
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True)
        hosts = out.stdout.split()
        if out.returncode == 0 and hosts:
            return hosts[0]
    first = re.match(r'([^,\[]+)(\[([^\]]+)\])?', nodelist.strip())
    if first is None:
        raise LauncherError(f'cannot parse SLURM_NODELIST={nodelist!r}')
    prefix, ranges = first.group(1), first.group(3)
    if ranges is None:
        return prefix
    return prefix + ranges.split(',')[0].split('-')[0]


def dist_env_from_launcher(launcher: str, env: dict[str, str] | None = None, port: int | None = None) -> DistEnv:
    """Rank, world size, local rank and master address as the launcher's environment describes them."""
    env = dict(os.environ if env is None else env)
    if launcher == 'pytorch':
        return DistEnv(rank=_env_int(env, 'RANK', launcher), world_size=_env_int(env, 'WORLD_SIZE', launcher),
                       local_rank=int(env.get('LOCAL_RANK', 0)), master_addr=env.get('MASTER_ADDR'),
                       master_port=int(env['MASTER_PORT']) if 'MASTER_PORT' in env else None)
    if launcher == 'slurm':
        rank = _env_int(env, 'SLURM_PROCID', launcher)
        world_size = _env_int(env, 'SLURM_NTASKS', launcher)
        if 'SLURM_LOCALID' in env:
            local_rank = int(env['SLURM_LOCALID'])
        else:
            local_rank = rank % max(torch.cuda.device_count(), 1)
        master_addr = env.get('MASTER_ADDR') or first_slurm_host(env.get('SLURM_NODELIST', 'localhost'))
        master_port = int(env.get('MASTER_PORT') or port or DEFAULT_PORT)
        return DistEnv(rank, world_size, local_rank, master_addr, master_port)
    raise LauncherError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}')


def check_not_launched_by_torchrun(launcher: str) -> None:
    """Refuse ``--launcher none`` inside a multi-process torchrun job (every rank would train alone)."""
    world_size = os.environ.get('WORLD_SIZE')
    if launcher == 'none' and world_size not in (None, '', '1') and 'TORCHELASTIC_RUN_ID' in os.environ:
        raise LauncherError(f'started by torchrun with WORLD_SIZE={world_size} but --launcher none: '
                            'add --launcher pytorch, or every process trains on its own')


def init_distributed(launcher: str, backend: str, port: int | None = None, use_cuda: bool = True) -> DistEnv:
    """Initialise the default process group; pins this process to GPU ``local_rank`` when ``use_cuda``.

    ``backend`` is used on GPUs; without CUDA (or with ``use_cuda`` False) gloo is used instead.
    """
    info = dist_env_from_launcher(launcher, port=port)
    os.environ.update(RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK=str(info.local_rank))
    if info.master_addr:
        os.environ['MASTER_ADDR'] = info.master_addr
    if info.master_port:
        os.environ['MASTER_PORT'] = str(info.master_port)
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(DEFAULT_PORT))
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend if cuda else 'gloo', rank=info.rank, world_size=info.world_size)
    return info


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
