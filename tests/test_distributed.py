"""Multi-process training: torchrun with 2 CPU processes (gloo) against one process with the doubled batch,
and the launcher environments (torchrun, SLURM) read by sr_arch.utils.dist."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import sr_arch  # noqa: F401
from helpers import HELDOUT_PHOTOS, REPO_ROOT, make_paired_folder
from sr_arch import train as train_module
from sr_arch.utils import dist as dist_utils
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint
from test_training import tiny_options, write_options

_RANK_RUNNER = textwrap.dedent('''
    import os, sys
    import sr_arch
    import torch
    from sr_arch.train import train_pipeline
    from sr_arch.utils.dist import cleanup_distributed

    model = train_pipeline(os.getcwd(), sys.argv[1:])
    torch.save({'net_g': model.get_bare_model(model.net_g).state_dict(), 'net_g_ema': model.net_g_ema.state_dict(),
                'metrics': dict(model.metric_results), 'lr': model.get_current_learning_rate()},
               f"rank{os.environ['RANK']}.pt")
    cleanup_distributed()
''')


def ddp_options(paired, val_paired, name: str, batch: int) -> dict:
    """6 photos x enlarge ratio 2 = 12 positions per epoch; 2 x batch 2 or 1 x batch 4 both take 3 steps
    per epoch and see the same 4 samples per step (rank r draws positions r, r+2, … of the permutation,
    and every sample's crop/flip/rotation is seeded by its position, not by the rank)."""
    val_hr, val_lr = val_paired
    return tiny_options(paired, name, {
        'datasets': {'train': {'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 2},
                     'val': {'dataroot_gt': val_hr, 'dataroot_lq': val_lr}},
        # SGD: Adam's first steps are ~lr * sign(grad), so a 1e-9 rounding difference on a near-zero
        # gradient entry moves that weight by up to 2 * lr and hides what this test compares
        'train': {'total_iter': 6, 'ema_decay': 0.9,
                  'optim_g': {'type': 'SGD', 'lr': 0.05, 'momentum': 0.9, 'betas': None}},
        'val': {'val_freq': 6, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}},
        'logger': {'save_checkpoint_freq': 3}})


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    paired = make_paired_folder(str(tmp_path / 'train'), 2, max_side=48)
    val_paired = make_paired_folder(str(tmp_path / 'val'), 2, HELDOUT_PHOTOS, max_side=48)
    ddp_root = tmp_path / 'ddp'
    ddp_root.mkdir()
    runner = ddp_root / 'runner.py'
    runner.write_text(_RANK_RUNNER)
    yml = write_options(ddp_root, ddp_options(paired, val_paired, 'ddp', batch=2))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(runner), '-opt', yml, '--launcher', 'pytorch'],
                          cwd=str(ddp_root), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(str(ddp_root / f'rank{r}.pt'), weights_only=True) for r in (0, 1)]

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_root = tmp_path / 'single'
        single_root.mkdir()
        single = train_module.train_pipeline(
            str(single_root), ['-opt', write_options(single_root, ddp_options(paired, val_paired, 'single', batch=4))])
    finally:
        torch.set_num_threads(previous_threads)

    for key in ('net_g', 'net_g_ema'):
        for name, tensor in ranks[0][key].items():
            assert torch.equal(tensor, ranks[1][key][name]), f'{key}.{name} differs between ranks'
    saved = extract_state_dict(load_checkpoint(str(ddp_root / 'experiments/ddp/models/net_g_latest.pth')), 'params')
    assert all(torch.equal(saved[name], tensor) for name, tensor in ranks[0]['net_g'].items())

    # gradients are all-reduced (gloo sum / 2) instead of averaged inside one batch: float32 rounding only
    single_state = single.get_bare_model(single.net_g).state_dict()
    diff = max((ranks[0]['net_g'][name] - tensor).abs().max().item() for name, tensor in single_state.items())
    print(f'max |DDP - single| after 6 steps: net_g {diff:.2e}', end=' ')
    assert diff < 1e-6
    ema_diff = max((ranks[0]['net_g_ema'][name] - tensor).abs().max().item()
                   for name, tensor in single.net_g_ema.state_dict().items())
    print(f'net_g_ema {ema_diff:.2e}')
    assert ema_diff < 1e-6
    assert ranks[0]['lr'] == single.get_current_learning_rate()
    # validation ran on 2 + 1 images and was gathered: equal to the single-process mean over 3 images
    assert ranks[0]['metrics'] == ranks[1]['metrics']
    assert ranks[0]['metrics']['psnr'] == pytest.approx(single.metric_results['psnr'], abs=1e-3)


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
