"""Multi-process training: torchrun with 2 CPU processes (gloo) against one process with the doubled batch,
and the launcher environments (torchrun, SLURM) read by sr_arch.utils.dist."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from test_training import TESTS_DIR, dropout_net, tiny_options, write_options

import sr_arch  # noqa: F401
from helpers import HELDOUT_PHOTOS, ONE_THREAD, REPO_ROOT, SUBPROCESS_TIMEOUT, make_paired_folder
from sr_arch import train as train_module
from sr_arch.utils import dist as dist_utils
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

_RANK_RUNNER = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {tests!r})
    import sr_arch
    import test_training  # registers TrainingTestDropoutNet
    import torch
    from sr_arch.train import train_pipeline
    from sr_arch.utils.dist import cleanup_distributed

    model = train_pipeline(os.getcwd(), sys.argv[1:])
    torch.save({{'net_g': model.get_bare_model(model.net_g).state_dict(), 'best': model.best_metric_results,
                'lr': model.get_current_learning_rate()}}, f"rank{{os.environ['RANK']}}.pt")
    cleanup_distributed()
''')


def run_process_group(command: list[str], cwd: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``command`` in its own session; on timeout kill the whole group (torchrun's workers included)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f'{" ".join(command)} still running after {timeout} s (hung?):\n{output[-6000:]}')
    return proc.returncode, output


def ddp_options(paired, val_paired, one_image, name: str, batch: int) -> dict:
    """6 photos x enlarge ratio 2 = 12 positions per epoch; 2 x batch 2 or 1 x batch 4 both take 3 steps
    per epoch and see the same 4 samples per step (rank r draws positions r, r+2, … of the permutation,
    and every sample's crop/flip/rotation is seeded by its position, not by the rank).

    Validation: 1 image first (rank 1 validates nothing), then 3 images (2 + 1). No EMA, so validation
    runs net_g, and the network has a buffer, which the first DDP forward after training broadcasts: run
    through the DDP wrapper, rank 0 would wait for rank 1 forever."""
    return tiny_options(paired, name, {
        'network_g': dropout_net(dropout=0.0),
        'datasets': {'train': {'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 2},
                     'val': None,  # replaced by a 1-image and a 3-image set, in this order
                     'val_one': {'name': 'one', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                                 'dataroot_gt': one_image[0], 'dataroot_lq': one_image[1]},
                     'val_three': {'name': 'three', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                                   'dataroot_gt': val_paired[0], 'dataroot_lq': val_paired[1]}},
        # SGD: Adam's first steps are ~lr * sign(grad), so a 1e-9 rounding difference on a near-zero
        # gradient entry moves that weight by up to 2 * lr and hides what this test compares
        'train': {'total_iter': 6,
                  'optim_g': {'type': 'SGD', 'lr': 0.05, 'momentum': 0.9, 'betas': None}},
        'val': {'val_freq': 6, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}},
        'logger': {'save_checkpoint_freq': 3}})


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    paired = make_paired_folder(str(tmp_path / 'train'), 2, max_side=48)
    val_paired = make_paired_folder(str(tmp_path / 'val'), 2, HELDOUT_PHOTOS, max_side=48)
    one_image = make_paired_folder(str(tmp_path / 'one'), 2, ('cat',), max_side=48)
    ddp_root = tmp_path / 'ddp'
    ddp_root.mkdir()
    runner = ddp_root / 'runner.py'
    runner.write_text(_RANK_RUNNER.format(tests=TESTS_DIR))
    yml = write_options(ddp_root, ddp_options(paired, val_paired, one_image, 'ddp', batch=2))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **ONE_THREAD)
    returncode, output = run_process_group([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                            '--nproc_per_node=2', str(runner), '-opt', yml, '--launcher', 'pytorch'],
                                           cwd=str(ddp_root), env=env, timeout=SUBPROCESS_TIMEOUT)
    assert returncode == 0, output[-6000:]
    ranks = [torch.load(str(ddp_root / f'rank{r}.pt'), weights_only=True) for r in (0, 1)]

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_root = tmp_path / 'single'
        single_root.mkdir()
        single = train_module.train_pipeline(
            str(single_root),
            ['-opt', write_options(single_root, ddp_options(paired, val_paired, one_image, 'single', batch=4))])
    finally:
        torch.set_num_threads(previous_threads)

    for name, tensor in ranks[0]['net_g'].items():
        assert torch.equal(tensor, ranks[1]['net_g'][name]), f'{name} differs between ranks'
    saved = extract_state_dict(load_checkpoint(str(ddp_root / 'experiments/ddp/models/net_g_latest.pth')), 'params')
    assert all(torch.equal(saved[name], tensor) for name, tensor in ranks[0]['net_g'].items())

    # gradients are all-reduced (gloo sum / 2) instead of averaged inside one batch: float32 rounding only
    single_state = single.get_bare_model(single.net_g).state_dict()
    diff = max((ranks[0]['net_g'][name] - tensor).abs().max().item() for name, tensor in single_state.items())
    print(f'max |DDP - single| after 6 steps: {diff:.2e}')
    assert diff < 1e-5
    assert ranks[0]['lr'] == single.get_current_learning_rate()
    # validation ran on 1 + 0 and 2 + 1 images and was gathered: equal to the single-process means
    assert ranks[0]['best'] == ranks[1]['best']
    for dataset in ('one', 'three'):
        ddp_psnr, single_psnr = ranks[0]['best'][dataset]['psnr'], single.best_metric_results[dataset]['psnr']
        assert ddp_psnr['iter'] == single_psnr['iter'] == 6
        assert ddp_psnr['val'] == pytest.approx(single_psnr['val'], abs=1e-3)


_SLURM_TASK = textwrap.dedent('''
    import importlib.util, sys
    import torch
    spec = importlib.util.spec_from_file_location('dist', {module!r})
    dist = sys.modules['dist'] = importlib.util.module_from_spec(spec)  # without sr_arch/__init__: fast
    spec.loader.exec_module(dist)
    info = dist.init_distributed('slurm', backend='nccl', port=int(sys.argv[1]))
    value = torch.tensor([float(info.rank + 1)])
    torch.distributed.all_reduce(value)
    print(f'rank={{info.rank}} world={{info.world_size}} local={{info.local_rank}} sum={{value.item():g}}')
    dist.cleanup_distributed()
''')


def test_slurm_launcher_initialises_a_gloo_group_from_srun_variables(tmp_path):
    """Two processes with the variables srun sets (2 tasks on one node) rendezvous and all-reduce."""
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    code = _SLURM_TASK.format(module=os.path.join(REPO_ROOT, 'sr_arch', 'utils', 'dist.py'))
    base = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'MASTER_', 'RANK', 'WORLD_SIZE'))}
    tasks = [subprocess.Popen([sys.executable, '-c', code, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(base, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                                                  SLURM_NTASKS='2', SLURM_NODELIST='localhost', **ONE_THREAD))
             for rank in (0, 1)]
    try:
        outputs = [task.communicate(timeout=SUBPROCESS_TIMEOUT)[0] for task in tasks]
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert 'rank=0 world=2 local=0 sum=3' in outputs[0] and 'rank=1 world=2 local=1 sum=3' in outputs[1]


def test_slurm_and_torchrun_environments():
    slurm = {'SLURM_PROCID': '11', 'SLURM_NTASKS': '16', 'SLURM_LOCALID': '3', 'SLURM_NODELIST': 'gpu[03-05,09],cpu1'}
    info = dist_utils.dist_env_from_launcher('slurm', slurm, port=29511)
    assert (info.rank, info.world_size, info.local_rank, info.master_port) == (11, 16, 3, 29511)
    if not shutil.which('scontrol'):
        assert info.master_addr == 'gpu03'
    assert dist_utils.dist_env_from_launcher('slurm', dict(slurm, MASTER_ADDR='head', MASTER_PORT='1234')) \
        == dist_utils.DistEnv(11, 16, 3, 'head', 1234)
    assert dist_utils.first_slurm_host('node7') == 'node7'

    torchrun = {'RANK': '9', 'WORLD_SIZE': '16', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'n0', 'MASTER_PORT': '29500'}
    assert dist_utils.dist_env_from_launcher('pytorch', torchrun) == dist_utils.DistEnv(9, 16, 1, 'n0', 29500)
    with pytest.raises(dist_utils.LauncherError, match='SLURM_NTASKS is not set.*srun'):
        dist_utils.dist_env_from_launcher('slurm', {'SLURM_PROCID': '0'})
    with pytest.raises(dist_utils.LauncherError, match="RANK='x' is not an integer"):
        dist_utils.dist_env_from_launcher('pytorch', dict(torchrun, RANK='x'))
