"""Runs are never lost: experiment folders, ``--auto_resume``, ``--force_yml``, failed starts, run logs.

Each trap is provoked the way a user meets it (a finished run, then a bad start, then a resume) and what
is on disk afterwards is asserted, file by file.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

import pytest

import sr_arch  # noqa: F401  (before basicsr)
from helpers import REPO_ROOT, deep_update, make_paired_folder, run_script, tiny_options, write_options
from sr_arch import cli
from sr_arch import train as train_module
from sr_arch.data.robust_io import PairScaleError, RobustDataset
from sr_arch.utils.options import OptionError, apply_force_yml, build_arg_parser, parse_options


@pytest.fixture(scope='module')
def paired(tmp_path_factory) -> tuple[str, str]:
    return make_paired_folder(str(tmp_path_factory.mktemp('paired')), 2, max_side=48)


def snapshot(folder) -> dict[str, int]:
    """Every file under ``folder`` (relative path) -> modification time in ns."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return found


def train(root, opt: dict, *args: str) -> int:
    """``sr-arch train -opt <opt> args`` in-process, experiments under ``root``; the exit status."""
    cwd = os.getcwd()
    os.chdir(str(root))
    try:
        return train_module.main(['-opt', write_options(root, opt), *args])
    finally:
        os.chdir(cwd)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if 'error' in line.lower()]


# ---------------------------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_failed_starts_change_nothing_and_auto_resume_continues_the_same_folder(tmp_path, paired, capsys):
    opt = tiny_options(paired, 'esrt_like', {'logger': {'save_checkpoint_freq': 2}})
    assert train(tmp_path, opt) == 0
    experiments = tmp_path / 'experiments'
    finished = snapshot(experiments)
    assert {'esrt_like/models/net_g_4.pth', 'esrt_like/models/net_g_latest.pth',
            'esrt_like/training_states/4.state'} <= set(finished)

    # an empty value on the real command line: one line, no traceback, nothing renamed or created
    proc = run_script('train.py', ['-opt', write_options(tmp_path, opt), '--force_yml', 'train:optim_g:lr='],
                      cwd=str(tmp_path), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "train: error: --force_yml 'train:optim_g:lr=': empty value; give one, or ~ for none"]
    assert snapshot(experiments) == finished
    capsys.readouterr()

    # a value that passes the option check but fails when the model is built (basicsr had renamed the
    # finished run to esrt_like_archived_<time> by then)
    assert train(tmp_path, opt, '--force_yml', 'train.optim_g.lr=~') == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and 'train.optim_g' in errors[0]
    assert snapshot(experiments) == finished and not (tmp_path / 'tb_logger').exists()

    assert train(tmp_path, opt, '--auto_resume', '--force_yml', 'train:total_iter=12') == 0
    log = capsys.readouterr().err
    assert f'resuming from {experiments}/esrt_like/training_states/4.state (iteration 4)' in log
    assert 'Resuming training from epoch' in log and 'iteration 4' in log
    assert os.listdir(experiments) == ['esrt_like']
    after = snapshot(experiments)
    for name, mtime in finished.items():  # the first run's files are all still there, checkpoints untouched
        assert name in after
        if name.endswith(('_4.pth', '4.state', '_2.pth', '2.state')):
            assert after[name] == mtime, name
    assert {f'esrt_like/training_states/{i}.state' for i in (2, 4, 6, 8, 10, 12)} <= set(after)
    assert len([n for n in after if re.fullmatch(r'esrt_like/train_esrt_like_.*\.log', n)]) == 2
    assert len([n for n in after if n.startswith('esrt_like/options')]) == 2  # the first copy is kept

    assert train(tmp_path, deep_update(opt, {'name': 'never_ran'}), '--auto_resume') == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if '--auto_resume' in line]
    assert len(warnings) == 1 and 'nothing to resume' in warnings[0] and 'starting from iteration 0' in warnings[0]
    assert sorted(os.listdir(experiments)) == ['esrt_like', 'never_ran']


def test_a_new_start_archives_the_old_run_and_says_so(tmp_path, paired, capsys):
    opt = tiny_options(paired, 'again', {'train': {'total_iter': 1}, 'datasets': {'val': None}})
    assert train(tmp_path, opt) == 0
    first = snapshot(tmp_path / 'experiments' / 'again')
    assert train(tmp_path, opt) == 0
    archived = [n for n in os.listdir(tmp_path / 'experiments') if n.startswith('again_archived_')]
    assert len(archived) == 1 and snapshot(tmp_path / 'experiments' / archived[0]) == first
    messages = [line for line in capsys.readouterr().err.splitlines() if 'archived to' in line]
    assert len(messages) == 1 and 'WARNING' in messages[0] and '--auto_resume would have continued it' in messages[0]

    # an explicit path.resume_state continues: nothing archived
    state = tmp_path / 'experiments' / 'again' / 'training_states' / '1.state'
    assert train(tmp_path, deep_update(opt, {'path': {'resume_state': str(state)}, 'train': {'total_iter': 2}})) == 0
    assert len([n for n in os.listdir(tmp_path / 'experiments') if n.startswith('again_archived_')]) == 1
    assert (tmp_path / 'experiments' / 'again' / 'training_states' / '2.state').exists()


# ---------------------------------------------------------------------------------------------- --force_yml


def test_force_yml_takes_dotted_keys_and_refuses_empty_or_malformed_values(tmp_path, paired):
    opt = {'train': {'total_iter': 4, 'optim_g': {'lr': 1e-3}},
           'datasets': {'val_sig1.80': {'name': 'Set5_sig1.80'}}, 'name': 'x'}
    created = apply_force_yml(opt, ['train.total_iter=10', 'train:optim_g:lr=2e-4', 'datasets.val_sig1.80.name=y',
                                    'train.ema_decay=0.999', 'val.save_img=true', 'name=nan'], 'o.yml')
    assert opt['train'] == {'total_iter': 10, 'optim_g': {'lr': 2e-4}, 'ema_decay': 0.999}
    assert opt['datasets'] == {'val_sig1.80': {'name': 'y'}} and opt['val'] == {'save_img': True}
    assert opt['name'] == 'nan'  # a string: only number-looking strings become numbers
    assert created == ['train.ema_decay', 'val', 'val.save_img']

    before = {'train': {'total_iter': 4}}
    for entry, expected in [
            ('train:total_iter=', "--force_yml 'train:total_iter=': empty value; give one, or ~ for none"),
            ('train.total_iter=  ', "--force_yml 'train.total_iter=  ': empty value"),
            ('train:milestones=[1,2', "--force_yml 'train:milestones=[1,2': '[1,2' is not a YAML value "
                                      "(expected ',' or ']', but got '<stream end>')"),
            ('train..total_iter=3', "--force_yml 'train..total_iter=3': empty key"),
            ('=3', "--force_yml '=3': empty key"),
            ('train.total_iter', "--force_yml 'train.total_iter': expected KEY=VALUE"),
            ('train.total_iter.x=1', "--force_yml 'train.total_iter.x=1': train.total_iter in o.yml is 8, not a "
                                     'mapping')]:
        attempt = {'train': {'total_iter': 4}}
        with pytest.raises(OptionError) as info:
            apply_force_yml(attempt, ['train.total_iter=8', entry], 'o.yml')
        assert str(info.value).startswith(expected) and '\n' not in str(info.value)
        assert attempt == before  # all or nothing

    path = write_options(tmp_path, tiny_options(paired, 'dots'))
    parsed, _ = parse_options(str(tmp_path), True, ['-opt', path, '--force_yml', 'train.total_iter=10',
                                                    'datasets.train.batch_size_per_gpu=1'])
    assert parsed['train']['total_iter'] == 10 and parsed['datasets']['train']['batch_size_per_gpu'] == 1
    assert 'total_iter' not in parsed  # no stray top-level key "train.total_iter"


# ---------------------------------------------------------------------------------------------- data


def test_an_lr_folder_of_another_scale_is_named_before_anything_is_created(tmp_path, paired):
    x4 = {'scale': 4, 'network_g': {'upscale': 4}, 'datasets': {'train': {'gt_size': 32}}}
    opt = tiny_options(paired, 'x4_on_x2', x4)  # paired holds x2 LR images
    with pytest.raises(OptionError) as info:
        train_module.train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path, opt)])
    message = str(info.value)
    hr, lr = paired
    assert re.search(rf'datasets.train: LR {re.escape(lr)}/\w+\.png \(\d+x\d+\) is not 1/4 of its GT '
                     rf'{re.escape(hr)}/\w+\.png \(\d+x\d+, about x2\)', message), message
    assert 'check datasets.train.dataroot_lq / dataroot_gt against scale: 4' in message
    assert not (tmp_path / 'experiments').exists()

    # the validation set is checked too (there GT may exceed LR x scale by less than one LR pixel)
    opt = tiny_options(paired, 'val_x4', {'datasets': {'val': {'scale': 4}}, 'val': {'val_freq': 1}})
    val_set = train_module.build_dataset_checked(dict(opt['datasets']['val'], phase='val', scale=4), 'val', 'o.yml')
    with pytest.raises(OptionError, match=r'datasets.val: LR .* is not 1/4 of its GT'):
        train_module.check_pair_scales(val_set, 'val', 'o.yml')


def test_one_mismatched_pair_fails_by_name_while_training(tmp_path):
    import cv2

    hr, lr = make_paired_folder(str(tmp_path), 2, names=('astronaut', 'coffee'), max_side=48)
    cv2.imwrite(os.path.join(lr, 'coffee.png'), cv2.imread(os.path.join(hr, 'coffee.png'))[:16, :16])
    opt = tiny_options((hr, lr), 'one_bad')['datasets']['train']
    dataset = train_module.build_dataset_checked(dict(opt, phase='train', scale=2), 'train', 'o.yml')
    robust = RobustDataset(dataset, skip_bad_images=True)  # a mismatch is not skipped like a bad image
    coffee = [os.path.basename(p['gt_path']) for p in dataset.paths].index('coffee.png')
    assert robust[1 - coffee]['gt'].shape == (3, 32, 32)
    with pytest.raises(PairScaleError) as info:
        robust[coffee]
    message = str(info.value)
    assert message.startswith(f'datasets.train: {hr}/coffee.png and {lr}/coffee.png: Scale mismatches. GT (48, 48)')
    assert message.endswith('Check datasets.train.dataroot_gt / dataroot_lq against scale')


def test_lmdb_pairs_are_checked_from_their_meta_info(tmp_path, paired):
    from sr_arch.data.prepare.lmdb_store import build_lmdb

    hr, lr = paired
    build_lmdb(hr, str(tmp_path / 'hr.lmdb'))
    build_lmdb(lr, str(tmp_path / 'lr.lmdb'))
    data = {'dataroot_gt': str(tmp_path / 'hr.lmdb'), 'dataroot_lq': str(tmp_path / 'lr.lmdb'),
            'io_backend': {'type': 'lmdb'}}
    opt = tiny_options(paired, 'lmdb', {'datasets': {'train': data}})['datasets']['train']
    fine = train_module.build_dataset_checked(dict(opt, phase='train', scale=2), 'train', 'o.yml')
    train_module.check_pair_scales(fine, 'train', 'o.yml')
    wrong = train_module.build_dataset_checked(dict(opt, phase='train', scale=3), 'train', 'o.yml')
    with pytest.raises(OptionError, match=rf'LR {re.escape(str(tmp_path))}/lr.lmdb key \w+ .* is not 1/3 of its GT '
                                          rf'{re.escape(str(tmp_path))}/hr.lmdb key \w+'):
        train_module.check_pair_scales(wrong, 'train', 'o.yml')


# ---------------------------------------------------------------------------------------------- logs and help


class BasicsrLog(logging.Handler):
    """basicsr's log messages at INFO and above while in the ``with`` block (it does not propagate to caplog)."""

    def __enter__(self) -> list[str]:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.logger = logging.getLogger('basicsr')
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self.messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.previous_level)


def test_eta_is_never_negative_at_the_last_iteration():
    opt = {'name': 'eta', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 10}}
    message_logger = train_module.ProgressMessageLogger(opt, start_iter=0)
    message_logger.start_time = time.time() - 90  # the clock restarts after iteration 1
    with BasicsrLog() as messages:
        message_logger({'epoch': 0, 'iter': 10, 'lrs': [1e-3], 'time': 10.0, 'data_time': 0.1, 'l_pix': 0.5})
        message_logger({'epoch': 0, 'iter': 5, 'lrs': [1e-3], 'time': 10.0, 'data_time': 0.1, 'l_pix': 0.5})
    assert '[eta: 0:00:00, time (data): 10.000 (0.100)] l_pix: 5.0000e-01' in messages[0]  # basicsr: -1 day, 23:59:59
    assert '[eta: 0:01:52,' in messages[1]  # 90 s for iterations 2-5, 5 left: 112 s


def test_testing_logs_no_best_at_run_name(tmp_path, paired):
    from sr_arch import test as test_module

    opt = tiny_options(paired, 'bench', {'datasets': {'train': None}, 'train': None, 'logger': None,
                                         'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}})
    path = write_options(tmp_path, opt)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with BasicsrLog() as messages:
            assert test_module.main(['-opt', path]) == 0
    finally:
        os.chdir(cwd)
    validation = [m for m in messages if m.startswith('Validation')]
    assert len(validation) == 1 and re.fullmatch(r'Validation val\n\t # psnr: \d+\.\d{4}\n', validation[0])
    assert not [m for m in messages if 'Best' in m or '@ bench iter' in m]


def test_help_names_the_command_and_only_its_flags(capsys, monkeypatch):
    for command in ('train', 'test'):
        with pytest.raises(SystemExit) as info:
            cli.main([command, '--help'])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f'usage: sr-arch {command} ')
        assert ('--auto_resume' in text and '--debug' in text) == (command == 'train')
    monkeypatch.setattr(sys, 'argv', ['/somewhere/train.py', '--help'])  # python train.py --help
    assert build_arg_parser(True).format_usage().startswith('usage: train.py ')
    with pytest.raises(SystemExit):
        parse_options('.', False, ['-opt', 'x.yml', '--auto_resume'])
    assert 'unrecognized arguments: --auto_resume' in capsys.readouterr().err


def test_small_things_profile_scale_and_pretrained_readme(capsys):
    from sr_arch import profile

    assert profile.main(['--arch', 'HAT', '--variant', 'HAT-S', '--scale', '5']) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ['sr-arch profile: error: HAT-S x5: HAT: upscale must be a power of 2 '
                                                 'or 3, got 5'] and captured.out == ''
    assert profile.main(['--arch', 'ESRT', '--scale', '5']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'sr-arch profile: error: ESRT x5: ESRT: upscale must be 2, 3, 4 (or another power of two), got 5']
    with open(os.path.join(REPO_ROOT, 'experiments', 'pretrained_models', 'README.md')) as f:
        text = f.read()
    assert '\\n' not in text and text.startswith('# Pretrained models\n\n')
