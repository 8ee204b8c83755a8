"""The training pipeline (sr_arch.train) and TrainingMixin features, on CPU with tiny networks.

Every pipeline run is in-process (``train_pipeline``) except where a real process kill is the point.
Distributed (torchrun, 2 gloo processes) tests live in test_distributed.py.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.utils.checkpoint import checkpoint

import sr_arch  # noqa: F401  (before basicsr: compat fixes; this module is also imported by a subprocess)
from helpers import (
    ONE_THREAD,
    REPO_ROOT,
    SUBPROCESS_TIMEOUT,
    deep_update,
    make_paired_folder,
    photo,
    tiny_options,
    write_options,
)
from sr_arch import train as train_module
from sr_arch.models.training import NonFiniteError
from sr_arch.utils.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint
from sr_arch.utils.dist import LauncherError
from sr_arch.utils.options import OptionError, parse_options

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@ARCH_REGISTRY.register()
class TrainingTestDropoutNet(nn.Module):
    """conv -> ReLU -> Dropout -> conv -> PixelShuffle: random in training (exact resumes need the RNG
    state), with an optional activation-checkpointed body (``use_chk``, the RGT spelling) and a buffer
    (the mean, as HAT/RGT/GRFormer have: DDP broadcasts buffers)."""

    def __init__(self, num_feat: int = 8, upscale: int = 2, dropout: float = 0.2, use_chk: bool = False) -> None:
        super().__init__()
        self.use_chk = use_chk
        self.register_buffer('mean', torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.tail = nn.Conv2d(num_feat, 3 * upscale * upscale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(upscale)
        self.upscale = upscale

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.drop(F.relu(self.head(x - self.mean))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, sH, sW)."""
        if self.use_chk and self.training:
            body = checkpoint(self.body, x, use_reentrant=False)
        else:
            body = self.body(x)
        return self.shuffle(body) + F.interpolate(x, scale_factor=self.upscale, mode='nearest')


@pytest.fixture(scope='module')
def paired(tmp_path_factory) -> tuple[str, str]:
    return make_paired_folder(str(tmp_path_factory.mktemp('paired')), 2, max_side=48)


def run_pipeline(root, opt: dict, *args: str):
    """``train.py -opt <opt> args`` in-process with experiments under ``root``; returns the model."""
    os.makedirs(str(root), exist_ok=True)
    return train_module.train_pipeline(str(root), ['-opt', write_options(root, opt), *args])


def model_options(tmp_path, train: dict | None = None, network: dict | None = None, path: dict | None = None
                  ) -> dict:
    """An ``opt`` as parse_options would return it, for building a model without the pipeline."""
    opt = tiny_options(('unused', 'unused'), 'unit', {'train': train or {}, 'network_g': network or {},
                                                      'path': path or {}})
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'),
                       experiments_root=str(tmp_path), visualization=str(tmp_path / 'vis'), log=str(tmp_path))
    return opt


def dropout_net(**kwargs) -> dict:
    """``network_g`` overrides turning tiny_options' MSRResNet into TrainingTestDropoutNet."""
    return dict({'type': 'TrainingTestDropoutNet', 'num_in_ch': None, 'num_out_ch': None, 'num_block': None},
                **kwargs)


def build(opt: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(copy.deepcopy(opt))


def photo_batch(names=('astronaut', 'coffee'), size: int = 32, scale: int = 2) -> dict[str, torch.Tensor]:
    """A real-photo (B, 3, size/scale, size/scale) LR / (B, 3, size, size) HR batch."""
    gt = torch.stack([torch.from_numpy(photo(name, 128)[40:40 + size, 40:40 + size]).permute(2, 0, 1).float() / 255
                      for name in names])
    return {'lq': F.interpolate(gt, scale_factor=1 / scale, mode='bicubic', antialias=True).clamp(0, 1), 'gt': gt}


def max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


class LogCapture(logging.Handler):
    """Collects basicsr's log records (it does not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> 'LogCapture':
        self.logger = logging.getLogger('basicsr')
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.previous_level)


# ---------------------------------------------------------------------------------------------- options


def test_parse_options_cli_and_errors(tmp_path, paired, monkeypatch):
    path = write_options(tmp_path, dict(tiny_options(paired, 'opts'), num_gpu='auto'))
    for flag in (['--local-rank=3'], ['--local_rank', '3']):
        opt, args = parse_options(str(tmp_path), True, ['-opt', path, *flag])
        assert args.local_rank == 3
    assert opt['num_gpu'] == torch.cuda.device_count() and opt['dist'] is False
    assert opt['path']['models'] == os.path.join(str(tmp_path), 'experiments', 'opts', 'models')

    opt, _ = parse_options(str(tmp_path), True, ['-opt', path, '--debug', '--force_yml', 'train:ema_decay=0.5',
                                                 'train:optim_g:lr=1e-3', 'train:amp:enabled=true'])
    assert opt['train']['ema_decay'] == 0.5 and opt['train']['optim_g']['lr'] == 1e-3
    assert opt['train']['amp'] == {'enabled': True}
    assert opt['name'] == 'debug_opts' and opt['logger']['save_checkpoint_freq'] == 8

    def error_of(opt_dict: dict, *extra: str) -> str:
        bad = write_options(tmp_path, opt_dict, 'bad.yml')
        with pytest.raises((OptionError, LauncherError)) as info:
            parse_options(str(tmp_path), True, ['-opt', bad, *extra])
        return str(info.value)

    base = tiny_options(paired, 'opts')
    if not torch.cuda.is_available():
        assert 'num_gpu: 2 but only 0 GPU(s)' in error_of(dict(base, num_gpu=2))
    assert 'bad.yml: missing required option network_g.type' in error_of(dict(base, network_g={'upscale': 2}))
    message = error_of(deep_update(base, {'train': {'amp': {'enabled': True, 'dtype': 'fp8'}}}))
    assert 'train.amp.dtype' in message and "'fp8'" in message and 'bad.yml' in message
    assert 'accumulate_grad_batches' in error_of(deep_update(base, {'train': {'accumulate_grad_batches': 0}}))
    for key in ('RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    assert 'RANK is not set' in error_of(base, '--launcher', 'pytorch')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'x')
    assert 'add --launcher pytorch' in error_of(base)


def test_activation_checkpointing_sets_the_network_flag(tmp_path, paired):
    opt = tiny_options(paired, 'chk', {'network_g': dropout_net(), 'train': {'activation_checkpointing': True}})
    parsed, _ = parse_options(str(tmp_path), True, ['-opt', write_options(tmp_path, opt)])
    assert parsed['network_g']['use_chk'] is True
    model = build(model_options(tmp_path, network=dropout_net(use_chk=True)))
    assert model.net_g.use_chk

    opt = tiny_options(paired, 'chk', {'train': {'activation_checkpointing': True}})
    with pytest.raises(OptionError, match='network_g.type MSRResNet has no use_checkpoint / use_chk'):
        parse_options(str(tmp_path), True, ['-opt', write_options(tmp_path, opt)])


# ---------------------------------------------------------------------------------------------- features


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    sgd = {'optim_g': {'type': 'SGD', 'lr': 0.5, 'betas': None}}
    accumulated = build(model_options(tmp_path, dict(sgd, accumulate_grad_batches=2)))
    big = build(model_options(tmp_path, sgd))
    first_only = build(model_options(tmp_path, sgd))
    assert max_diff(accumulated.net_g, big.net_g) == 0
    b1, b2 = photo_batch(('astronaut', 'coffee')), photo_batch(('chelsea', 'rocket'))
    accumulated.train_iteration([b1, b2], 1)
    big.train_iteration([{k: torch.cat([b1[k], b2[k]]) for k in b1}], 1)
    first_only.train_iteration([b1], 1)
    assert max_diff(accumulated.net_g, big.net_g) < 1e-6
    assert max_diff(accumulated.net_g, first_only.net_g) > 1e-4
    assert accumulated.log_dict['l_pix'] == pytest.approx(big.log_dict['l_pix'], rel=1e-5)


def test_grad_clip_bounds_the_norm_seen_by_the_optimizer(tmp_path):
    def norms_at_step(train: dict) -> list[float]:
        model = build(model_options(tmp_path, train))
        seen = []

        def record(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g['params'] if p.grad is not None]
            seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        model.optimizer_g.register_step_pre_hook(record)
        for it in (1, 2):
            model.train_iteration([photo_batch()], it)
        return seen, model.log_dict

    free, _ = norms_at_step({})
    clipped, log = norms_at_step({'grad_clip': {'max_norm': 0.001}})
    assert min(free) > 0.001
    assert max(clipped) <= 0.001 * (1 + 1e-5)
    assert log['grad_norm'] > 0.001  # the logged norm is the one before clipping


@pytest.mark.parametrize('schedule', ['MultiStepLR', 'CosineAnnealingRestartLR'])
def test_linear_warmup_then_schedule(tmp_path, schedule):
    scheduler = ({'type': 'MultiStepLR', 'milestones': [6], 'gamma': 0.5} if schedule == 'MultiStepLR'
                 else {'type': 'CosineAnnealingRestartLR', 'periods': [8], 'restart_weights': [1], 'eta_min': 0.0,
                       'milestones': None, 'gamma': None})
    sgd = {'type': 'SGD', 'lr': 1e-3, 'betas': None}
    model = build(model_options(tmp_path, {'optim_g': sgd, 'scheduler': scheduler, 'warmup_iter': 4}))
    lrs = []
    for it in range(1, 9):
        model.update_learning_rate(it, warmup_iter=model.features.warmup_iter)
        lrs.append(model.get_current_learning_rate()[0])
        model.train_iteration([photo_batch()], it)
    if schedule == 'MultiStepLR':
        # basicsr's own warm-up leaves this schedule at 0.75e-3 from iteration 4 on
        expected = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 0.5e-3, 0.5e-3]
    else:
        cosine = [0.5e-3 * (1 + np.cos(np.pi * (it - 1) / 8)) for it in range(1, 9)]
        expected = [c * min(it / 4, 1) for it, c in zip(range(1, 9), cosine)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_bf16_autocast_runs_the_network_in_bf16(tmp_path):
    model = build(model_options(tmp_path, {'amp': {'enabled': True, 'dtype': 'bf16'}}))
    dtypes = []
    model.net_g.conv_first.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = copy.deepcopy(model.net_g.state_dict())
    model.train_iteration([photo_batch()], 1)
    assert dtypes == [torch.bfloat16] and model.output.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())
    assert not model.grad_scaler.is_enabled()
    assert not torch.equal(before['conv_first.weight'], model.net_g.conv_first.weight)

    fp32 = build(model_options(tmp_path))
    fp32.train_iteration([photo_batch()], 1)
    assert fp32.output.dtype == torch.float32


def test_fp16_autocast_uses_a_grad_scaler_that_is_checkpointed(tmp_path):
    model = build(model_options(tmp_path, {'amp': {'enabled': True, 'dtype': 'fp16'}}))
    model.train_iteration([photo_batch()], 1)
    assert model.output.dtype == torch.float16 and model.grad_scaler.is_enabled()
    assert model.log_dict['amp_scale'] > 1
    model.save(0, 1)
    state = load_checkpoint(str(tmp_path / 'states' / '1.state'))
    assert state['grad_scaler']['scale'] == model.grad_scaler.get_scale()


def test_channels_last_weights_and_inputs(tmp_path):
    model = build(model_options(tmp_path, {'channels_last': True}))
    plain = build(model_options(tmp_path))
    assert model.net_g.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    model.feed_data(photo_batch())
    assert model.lq.is_contiguous(memory_format=torch.channels_last)
    assert not model.lq.is_contiguous()
    for it in (1, 2):
        model.train_iteration([photo_batch()], it)
        plain.train_iteration([photo_batch()], it)
    assert max_diff(model.net_g, plain.net_g) < 1e-5


def test_compile_trains_two_iterations(tmp_path):
    # the inductor backend needs ~25 s of C++ compilation for even a 2-conv net on this CPU, so the
    # wiring is tested with the aot_eager backend (same dynamo capture and AOT autograd, no codegen)
    torch._dynamo.reset()
    compiled = build(model_options(tmp_path, {'compile': {'enabled': True, 'backend': 'aot_eager'}}))
    eager = build(model_options(tmp_path))
    assert compiled.train_forward is not compiled.net_g and hasattr(compiled.train_forward, '_orig_mod')
    for it in (1, 2):
        compiled.train_iteration([photo_batch()], it)
        eager.train_iteration([photo_batch()], it)
    assert max_diff(compiled.net_g, eager.net_g) < 1e-5
    assert max_diff(compiled.net_g, build(model_options(tmp_path)).net_g) > 1e-4
    compiled.save(0, 2)
    saved = extract_state_dict(load_checkpoint(str(tmp_path / 'models' / 'net_g_2.pth')))
    assert set(saved) == set(eager.net_g.state_dict())  # no _orig_mod. prefixes


def test_optimizer_by_torch_name_and_clear_error(tmp_path):
    model = build(model_options(tmp_path, {'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01}}))
    assert isinstance(model.optimizer_g, torch.optim.AdamW)
    assert model.optimizer_g.defaults['fused'] is True  # torch's fused kernel on CPU too
    adamax = build(model_options(tmp_path, {'optim_g': {'type': 'Adamax', 'lr': 1e-3}}))
    assert adamax.optimizer_g.defaults['foreach'] is True  # no fused kernel: the multi-tensor one
    for explicit in ({'foreach': False}, {'fused': False}):
        chosen = build(model_options(tmp_path, {'optim_g': {'type': 'Adam', 'lr': 1e-3, **explicit}})).optimizer_g
        assert not chosen.defaults['fused'] and not chosen.defaults['foreach']
    with pytest.raises(ValueError, match="train.optim_g.type 'Adamm' is not a torch.optim optimizer"):
        build(model_options(tmp_path, {'optim_g': {'type': 'Adamm', 'lr': 1e-3}}))


# ---------------------------------------------------------------------------------------------- fine-tuning


def test_non_strict_finetune_load_reports_skipped_tensors(tmp_path):
    source = build(model_options(tmp_path)).net_g.state_dict()  # x2
    ckpt = {k: v for k, v in source.items() if k != 'conv_last.weight'}
    ckpt['extra.weight'] = torch.zeros(3)
    path = str(tmp_path / 'x2.pth')
    atomic_save({'params': ckpt}, path)

    x3 = {'upscale': 3}
    with LogCapture() as logs:
        model = build(model_options(tmp_path, network=x3, path={'pretrain_network_g': path, 'strict_load_g': False}),
                      seed=1)
    text = '\n'.join(logs.messages)
    assert 'missing in checkpoint (kept at initialisation): conv_last.weight' in text
    assert 'unexpected in checkpoint (ignored): extra.weight' in text
    assert ('shape mismatch (kept at initialisation): upconv1.weight: checkpoint [32, 8, 3, 3] vs network '
            '[72, 8, 3, 3]') in text
    assert torch.equal(model.net_g.conv_first.weight, source['conv_first.weight'])
    assert not torch.equal(model.net_g.conv_last.weight, source['conv_last.weight'])

    with pytest.raises(CheckpointError) as info:
        build(model_options(tmp_path, network=x3, path={'pretrain_network_g': path, 'strict_load_g': True}))
    assert path in str(info.value) and 'upconv1.weight: checkpoint [32, 8, 3, 3] vs network [72, 8, 3, 3]' \
        in str(info.value)


# ---------------------------------------------------------------------------------------------- pipeline


def test_pipeline_logs_tensorboard_scalars_images_and_progress(tmp_path, paired, capsys):
    opt = tiny_options(paired, 'tb', {'val': {'val_freq': 2, 'save_img': False, 'tb_images': 1,
                                              'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2,
                                                                   'test_y_channel': True}}},
                                      'logger': {'use_tb_logger': True, 'progress_bar': True},
                                      'train': {'ema_decay': 0.5, 'total_iter': 2}})
    model = run_pipeline(tmp_path, opt)
    assert np.isfinite(model.metric_results['psnr'])
    assert 'img/s' in capsys.readouterr().err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / 'tb_logger' / 'tb'), size_guidance={'images': 0}).Reload()
    scalars = events.Tags()['scalars']
    assert {'losses/l_pix', 'lr', 'images_per_s', 'metrics/val/psnr'} <= set(scalars)
    assert [e.step for e in events.Scalars('losses/l_pix')] == [1, 2]
    assert [tag for tag in events.Tags()['images'] if tag.startswith('val/val/')]


def test_nonfinite_loss_stops_with_iteration_and_saves_nothing_broken(tmp_path, paired):
    opt = tiny_options(paired, 'nan', {'train': {'optim_g': {'lr': 1e30}, 'total_iter': 6},
                                       'logger': {'save_checkpoint_freq': 1}})
    with pytest.raises(NonFiniteError) as info:
        run_pipeline(tmp_path, opt)
    message = str(info.value)
    failed_at = int(message.split('iteration ')[1].split(':')[0])
    assert failed_at <= 6 and ('l_pix=' in message or 'holds NaN/inf' in message)
    root = tmp_path / 'experiments' / 'nan'
    saved = sorted(int(os.path.basename(p)[6:-4]) for p in glob.glob(str(root / 'models' / 'net_g_[0-9]*.pth')))
    assert saved == list(range(1, failed_at))
    for path in glob.glob(str(root / 'models' / '*.pth')):
        assert all(torch.isfinite(t).all() for t in extract_state_dict(load_checkpoint(path)).values())
    with open(glob.glob(str(root / '*.log'))[0]) as f:
        assert f'iteration {failed_at}' in f.read()

    assert train_module.main(['-opt', write_options(tmp_path, opt), '--force_yml', 'name=nan2']) == 1


def test_missing_dataset_folder_is_named(tmp_path, paired):
    opt = tiny_options(paired, 'nodata', {'datasets': {'train': {'dataroot_lq': str(tmp_path / 'nowhere')}}})
    with pytest.raises(OptionError) as info:
        run_pipeline(tmp_path, opt)
    message = str(info.value)
    assert f"options.yml: datasets.train.dataroot_lq: folder '{tmp_path / 'nowhere'}' does not exist" in message


def test_weights_that_became_nonfinite_are_never_saved(tmp_path):
    model = build(model_options(tmp_path))
    with torch.no_grad():
        model.net_g.conv_last.bias[0] = float('nan')
    with pytest.raises(NonFiniteError, match=r'iteration 7: net_g.conv_last.bias holds NaN/inf'):
        model.save(0, 7)
    assert not glob.glob(str(tmp_path / 'models' / '*')) and not glob.glob(str(tmp_path / 'states' / '*'))


# ---------------------------------------------------------------------------------------------- resume

_KILL_RUNNER = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import sr_arch
    import test_training  # registers TrainingTestDropoutNet
    from sr_arch.models.training import TrainingMixin
    from sr_arch.train import main

    save_training_state = TrainingMixin.save_training_state

    def save_then_die(self, epoch, current_iter):
        save_training_state(self, epoch, current_iter)
        if current_iter == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    TrainingMixin.save_training_state = save_then_die
    sys.exit(main(sys.argv[1:]))
''')


def resume_options(paired, name: str) -> dict:
    return tiny_options(paired, name, {
        'deterministic': True, 'network_g': dropout_net(dropout=0.2),
        'train': {'total_iter': 12, 'ema_decay': 0.8, 'warmup_iter': 3,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [6, 10], 'gamma': 0.5}},
        'logger': {'save_checkpoint_freq': 4}})


def test_sigkill_then_auto_resume_equals_uninterrupted_run(tmp_path, paired):
    straight = run_pipeline(tmp_path / 'straight', resume_options(paired, 'resume'))

    killed_root = tmp_path / 'killed'
    killed_root.mkdir()
    # the interrupted run loads with 2 worker processes, the others in the main process: same samples
    yml = write_options(killed_root, deep_update(resume_options(paired, 'resume'),
                                                 {'datasets': {'train': {'num_worker_per_gpu': 2}}}))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **ONE_THREAD)
    proc = subprocess.run([sys.executable, '-c', _KILL_RUNNER.format(tests=TESTS_DIR, kill_at=8), '-opt', yml],
                          cwd=str(killed_root), env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    experiment = killed_root / 'experiments' / 'resume'
    assert sorted(os.listdir(experiment / 'training_states')) == ['4.state', '8.state']
    assert not (experiment / 'models' / 'net_g_latest.pth').exists()

    with LogCapture() as logs:
        resumed = train_module.train_pipeline(str(killed_root), ['-opt', yml, '--auto_resume', '--force_yml',
                                                                 'datasets:train:num_worker_per_gpu=0'])
    assert any('Resuming training from epoch 2, iteration 8' in m for m in logs.messages)
    for a, b in ((straight.net_g, resumed.net_g), (straight.net_g_ema, resumed.net_g_ema)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    assert straight.get_current_learning_rate() == resumed.get_current_learning_rate() == [5e-4]
    assert straight.optimizer_g.state_dict()['state'][0]['step'] == resumed.optimizer_g.state_dict()['state'][0]['step']

    # without the RNG state (dropout masks) and data position the continuation differs: the test can fail
    state = load_checkpoint(str(experiment / 'training_states' / '8.state'))
    state['rng'], state['loop'] = [], {}
    atomic_save(state, str(experiment / 'training_states' / '8.state'))
    os.remove(experiment / 'training_states' / '12.state')
    naive = train_module.train_pipeline(str(killed_root), ['-opt', yml, '--auto_resume', '--force_yml',
                                                           'datasets:train:num_worker_per_gpu=0'])
    assert max_diff(straight.net_g, naive.net_g) > 1e-6


_KILL_IN_ATOMIC_SAVE = textwrap.dedent('''
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location('checkpoint', {module!r})
    checkpoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkpoint)
    import torch
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die after the bytes, before the rename
    checkpoint.atomic_save({{'iter': 8, 'optimizers': [torch.zeros(1000)]}}, sys.argv[1])
''')


def test_auto_resume_never_picks_a_half_written_checkpoint(tmp_path):
    states, models = tmp_path / 'training_states', tmp_path / 'models'
    net = {'params': {'w': torch.ones(3)}}
    atomic_save({'iter': 4, 'epoch': 0}, str(states / '4.state'))
    atomic_save(net, str(models / 'net_g_4.pth'))
    atomic_save(net, str(models / 'net_g_8.pth'))
    module = os.path.join(REPO_ROOT, 'sr_arch', 'utils', 'checkpoint.py')
    proc = subprocess.run([sys.executable, '-c', _KILL_IN_ATOMIC_SAVE.format(module=module), str(states / '8.state')],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          env=dict(os.environ, **ONE_THREAD))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p for p in os.listdir(states) if p.endswith('.tmp')]
    assert leftovers and not (states / '8.state').exists()
    # a truncated state under its final name (e.g. written by basicsr's plain torch.save) and a
    # complete state whose network file is missing
    atomic_save({'iter': 12, 'epoch': 0, 'pad': torch.zeros(10000)}, str(states / '12.state'))
    with open(states / '12.state', 'r+b') as f:
        f.truncate(2000)
    atomic_save(net, str(models / 'net_g_12.pth'))
    atomic_save({'iter': 16, 'epoch': 0}, str(states / '16.state'))

    path, state, skipped = train_module.find_resume_state(str(states), str(models), ['g'])
    assert path == str(states / '4.state') and state['iter'] == 4
    assert [reason.split(':')[0] for reason in skipped] == ['iteration 16', 'iteration 12']
    assert 'net_g_16.pth' in skipped[0]
    assert train_module.remove_stale_temporaries(str(states)) == [str(states / leftovers[0])]
