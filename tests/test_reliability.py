"""Reliability: option-file validation, bad training images, LMDB entries, malicious checkpoints, NaN stops.

Every failure is provoked for real (a misspelled key, a truncated PNG, a cut LMDB value, a pickle whose
payload would write a file) and its one-line message is asserted, together with what is left on disk.
"""
from __future__ import annotations

import glob
import os
import pickle

import lmdb
import pytest
import torch

import helpers
import sr_arch  # noqa: F401  (before basicsr)
from helpers import REPO_ROOT, deep_update, make_paired_folder, run_script, write_options
from sr_arch import train as train_module
from sr_arch.data.robust_io import BadImageError
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint
from sr_arch.utils.option_validation import option_problems
from sr_arch.utils.options import OptionError, load_yaml, parse_options


@pytest.fixture(scope='module')
def paired(tmp_path_factory) -> tuple[str, str]:
    return make_paired_folder(str(tmp_path_factory.mktemp('paired')), 2, max_side=40)


def tiny_options(hr: str, lr: str, name: str, overrides: dict | None = None) -> dict:
    """helpers.tiny_options with 24-pixel patches, 3 iterations, a checkpoint each, no validation set."""
    reliability = {'datasets': {'train': {'gt_size': 24}, 'val': None}, 'val': None,
                   'train': {'total_iter': 3}, 'logger': {'save_checkpoint_freq': 1}}
    return deep_update(helpers.tiny_options((hr, lr), name, reliability), overrides or {})


def option_error(folder, opt: dict) -> str:
    path = write_options(folder, opt, 'bad.yml')
    with pytest.raises(OptionError) as info:
        parse_options(str(folder), True, ['-opt', path])
    return str(info.value)


def train_error(folder, opt: dict, exception: type[Exception]) -> str:
    with pytest.raises(exception) as info:
        train_module.train_pipeline(str(folder), ['-opt', write_options(folder, opt)])
    return str(info.value)


def leftovers(root: str) -> list[str]:
    """Temporary files of an interrupted save, anywhere under ``root``."""
    return [p for p in glob.glob(os.path.join(root, '**', '.*.tmp'), recursive=True)]


# ---------------------------------------------------------------------------------------------- validation


def test_misspelled_keys_get_one_line_with_a_suggestion(tmp_path, paired):
    base = tiny_options(*paired, 'typo')
    source = os.path.join(str(tmp_path), 'bad.yml')
    cases = [({'datasets': {'train': {'meta_info_fil': 'x.txt'}}},
              "datasets.train.meta_info_fil: unknown key for PairedImageDataset (did you mean 'meta_info_file'?)"),
             ({'network_g': {'num_feats': 16}}, "network_g.num_feats: unknown key for MSRResNet.__init__ "
                                               "(did you mean 'num_feat'?)"),
             ({'train': {'pixle_opt': {'type': 'L1Loss'}}}, "train.pixle_opt: unknown key (did you mean 'pixel_opt'?)"),
             ({'train': {'scheduler': {'gama': 0.5}}},
              "train.scheduler.gama: unknown key for MultiStepRestartLR (did you mean 'gamma'?)"),
             ({'train': {'optim_g': {'beta': [0.9, 0.99]}}},
              "train.optim_g.beta: unknown key for torch.optim.Adam (did you mean 'betas'?)"),
             ({'train': {'pixel_opt': {'reduce': 'sum'}}},
              "train.pixel_opt.reduce: unknown key for L1Loss.__init__ (did you mean 'reduction'?)"),
             ({'val': {'val_frq': 2}}, "val.val_frq: unknown key (did you mean 'val_freq'?)"),
             ({'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_boder': 2}}}},
              "val.metrics.psnr.crop_boder: unknown key for calculate_psnr (did you mean 'crop_border'?)"),
             ({'path': {'strict_laod_g': False}}, "path.strict_laod_g: unknown key (did you mean 'strict_load_g'?)"),
             ({'logger': {'print_frq': 10}}, "logger.print_frq: unknown key (did you mean 'print_freq'?)"),
             ({'manual_sed': 3}, "manual_sed: unknown key (did you mean 'manual_seed'?)"),
             ({'network_g': {'type': 'MSRResNett'}},
              "network_g.type: 'MSRResNett' is not a registered architecture (did you mean 'MSRResNet'?)")]
    for overrides, expected in cases:
        lines = option_error(tmp_path, deep_update(base, overrides)).splitlines()
        assert lines[0] == f'{source}: {expected}', overrides
        assert len(lines) == 1 or 'crop_boder' in expected  # the typo leaves crop_border missing: 2nd line


def test_wrong_types_and_missing_keys_name_key_and_file(tmp_path, paired):
    base = tiny_options(*paired, 'types')
    source = os.path.join(str(tmp_path), 'bad.yml')
    message = option_error(tmp_path, deep_update(base, {'train': {'optim_g': {'lr': '2e-4'}}}))
    assert message == (f"{source}: train.optim_g.lr: expected a number like the default 0.001 of torch.optim.Adam, "
                       "got '2e-4' (str); YAML reads 2e-4 as text (no decimal point): write !!float 2e-4 or e.g. "
                       "2.0e-4")
    assert option_error(tmp_path, deep_update(base, {'datasets': {'train': {'use_hflip': 'yes'}}})) == \
        f"{source}: datasets.train.use_hflip: expected true or false, got 'yes' (str)"
    assert option_error(tmp_path, deep_update(base, {'network_g': {'num_block': '4'}})) == \
        f"{source}: network_g.num_block: expected an integer like the default 16 of MSRResNet.__init__, got '4' " \
        "(str); write the number without quotes"
    assert option_error(tmp_path, deep_update(base, {'datasets': {'train': {'gt_size': None}}})) == \
        f'{source}: datasets.train.gt_size: missing required key (PairedImageDataset reads it)'
    assert option_error(tmp_path, deep_update(base, {'val': {'metrics': {'psnr': {'type': 'calculate_psnr'}}}})) == \
        f'{source}: val.metrics.psnr.crop_border: missing required key (calculate_psnr has no default for it)'
    two = option_error(tmp_path, deep_update(base, {'bogus': 1, 'scael': 2, 'logger': {'print_frq': 1}}))
    assert two.splitlines() == [f"{source}: scael: unknown key (did you mean 'scale'?)",  # 'bogus': a warning
                                f"{source}: logger.print_frq: unknown key (did you mean 'print_freq'?)"]


def test_missing_paths_and_option_file_are_one_line(tmp_path, paired):
    base = tiny_options(*paired, 'paths')
    source = os.path.join(str(tmp_path), 'bad.yml')
    nowhere = str(tmp_path / 'nowhere')
    assert option_error(tmp_path, deep_update(base, {'datasets': {'train': {'dataroot_gt': nowhere}}})) == \
        f"{source}: datasets.train.dataroot_gt: folder '{nowhere}' does not exist"
    assert option_error(tmp_path, deep_update(base, {'datasets': {'train': {'meta_info_file': nowhere}}})) == \
        f"{source}: datasets.train.meta_info_file: file '{nowhere}' does not exist"
    assert option_error(tmp_path, deep_update(base, {'path': {'pretrain_network_g': nowhere + '.pth'}})) == \
        f"{source}: path.pretrain_network_g: file '{nowhere}.pth' does not exist"
    with pytest.raises(OptionError, match=f'^option file not found: {nowhere}.yml$'):
        parse_options(str(tmp_path), True, ['-opt', nowhere + '.yml'])
    # through the command line: exit status 1 and the one line on stderr, no traceback
    bad = write_options(tmp_path, deep_update(base, {'network_g': {'type': 'MSRResNett'}}), 'cli.yml')
    proc = run_script('train.py', ['-opt', bad], str(tmp_path), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == (f"train: error: {bad}: network_g.type: 'MSRResNett' is not a registered "
                                   "architecture (did you mean 'MSRResNet'?)")
    assert not os.path.exists(tmp_path / 'experiments' / 'paths')


def test_every_shipped_option_file_validates():
    files = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', '**', '*.yml'), recursive=True))
    assert len(files) >= 60
    problems = []
    for path in files:
        problems += option_problems(load_yaml(path), os.path.relpath(path, REPO_ROOT),
                                    is_train=f'{os.sep}train{os.sep}' in path, check_paths=False)
    assert problems == []


# ---------------------------------------------------------------------------------------------- bad data


def copy_pairs(paired: tuple[str, str], folder) -> tuple[str, str]:
    import shutil

    hr, lr = (shutil.copytree(src, os.path.join(str(folder), name)) for src, name in zip(paired, ('hr', 'lr')))
    return hr, lr


def truncate(path: str) -> int:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    return len(data) // 2


def test_corrupt_png_stops_the_run_with_its_path(tmp_path, paired):
    hr, lr = copy_pairs(paired, tmp_path)
    bad = os.path.join(hr, sorted(os.listdir(hr))[0])
    size = truncate(bad)
    opt = tiny_options(hr, lr, 'badpng', {'train': {'total_iter': len(os.listdir(hr))}})  # one epoch at least
    message = train_error(tmp_path, opt, BadImageError)
    assert message == (f'{bad}: not a decodable image (corrupt or truncated, {size} bytes) '
                       '(set datasets.train.skip_bad_images: true to skip such images)')
    root = str(tmp_path / 'experiments' / 'badpng')
    assert leftovers(root) == []
    for path in glob.glob(os.path.join(root, 'models', '*.pth')):  # earlier iterations' checkpoints are whole
        assert all(torch.isfinite(t).all() for t in extract_state_dict(load_checkpoint(path)).values())
    with open(glob.glob(os.path.join(root, '*.log'))[0]) as f:
        assert f'BadImageError: {bad}: not a decodable image' in f.read()


def test_corrupt_png_is_skipped_and_counted_with_the_option(tmp_path, paired):
    hr, lr = copy_pairs(paired, tmp_path)
    bad = os.path.join(lr, sorted(os.listdir(lr))[1])
    truncate(bad)
    count = len(os.listdir(hr))
    opt = tiny_options(hr, lr, 'skip', {'datasets': {'train': {'skip_bad_images': True, 'num_worker_per_gpu': 1}},
                                        'train': {'total_iter': count}, 'logger': {'print_freq': count}})
    train_module.train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path, opt)])  # 2 epochs: 2 skips
    root = str(tmp_path / 'experiments' / 'skip')
    with open(glob.glob(os.path.join(root, '*.log'))[0]) as f:
        log = f.read()
    assert f'skipped bad image: {bad}: not a decodable image' in log
    assert 'datasets.train: skipped 2 bad image(s) so far' in log
    assert os.path.isfile(os.path.join(root, 'models', f'net_g_{count}.pth')) and leftovers(root) == []


def write_lmdb(folder: str, name: str, images: dict[str, bytes]) -> str:
    """An LMDB in basicsr's layout: ``<key>`` -> PNG bytes, a ``meta_info.txt`` line per key."""
    path = os.path.join(folder, f'{name}.lmdb')
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn, open(os.path.join(path, 'meta_info.txt'), 'w') as meta:
        for key, data in images.items():
            txn.put(key.encode('ascii'), data)
            meta.write(f'{key}.png (0,0,3) 1\n')  # basicsr's paired-LMDB reader only uses the key
    env.close()
    return path


def test_lmdb_missing_and_truncated_entries_are_named(tmp_path, paired):
    from basicsr.data import build_dataset

    from sr_arch.data.robust_io import RobustDataset

    def read(folder):
        return {os.path.splitext(n)[0]: open(os.path.join(folder, n), 'rb').read() for n in sorted(os.listdir(folder))}

    hr_images, lr_images = read(paired[0]), read(paired[1])
    hr_db = write_lmdb(str(tmp_path), 'hr', hr_images)
    first, second = sorted(hr_images)[:2]
    lr_db = write_lmdb(str(tmp_path), 'lr', dict(lr_images, **{first: lr_images[first][:100]}))
    env = lmdb.open(lr_db, map_size=1 << 26)  # the entry is gone, meta_info.txt still lists it
    with env.begin(write=True) as txn:
        txn.delete(second.encode('ascii'))
    env.close()
    opt = {'name': 'lmdb', 'type': 'PairedImageDataset', 'phase': 'val', 'scale': 2, 'dataroot_gt': hr_db,
           'dataroot_lq': lr_db, 'io_backend': {'type': 'lmdb'}}
    dataset = RobustDataset(build_dataset(opt), name='datasets.val')
    keys = [p['gt_path'] for p in dataset.paths]
    with pytest.raises(BadImageError) as info:
        dataset[keys.index(first)]
    assert str(info.value).startswith(f"lmdb {lr_db}, key '{first}': not a decodable image (corrupt or truncated, "
                                      '100 bytes)')
    with pytest.raises(BadImageError) as info:
        dataset[keys.index(second)]
    assert str(info.value).startswith(f"lmdb {lr_db}: key '{second}' not found")
    third = sorted(hr_images)[2]
    assert dataset[keys.index(third)]['gt'].shape[0] == 3  # good entries still load

    skipping = RobustDataset(dataset.dataset, skip_bad_images=True, name='datasets.val')  # one env per process
    assert skipping[keys.index(first)]['gt_path'] == third and skipping.skipped == 2  # first, second, then third


# ---------------------------------------------------------------------------------------------- checkpoints, NaN


class _Payload:
    """Unpickling this object would create ``marker`` (stands for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def test_malicious_pickle_pretrain_is_refused_and_never_runs(tmp_path, paired):
    marker = str(tmp_path / 'payload_ran')
    evil = str(tmp_path / 'evil.pth')
    with open(evil, 'wb') as f:
        pickle.dump({'params': _Payload(marker)}, f)
    opt = tiny_options(*paired, 'evil', {'path': {'pretrain_network_g': evil}})
    message = train_error(tmp_path, opt, Exception)
    assert message.startswith(f'{evil}: refused to load; the file needs arbitrary pickle code')
    assert not os.path.exists(marker)
    assert glob.glob(str(tmp_path / 'experiments' / 'evil' / 'models' / '*')) == []


def test_nan_learning_rate_stops_at_the_iteration_and_keeps_only_whole_checkpoints(tmp_path, paired):
    opt = tiny_options(*paired, 'nan', {'train': {'optim_g': {'lr': 1e30}, 'total_iter': 6}})
    message = train_error(tmp_path, opt, Exception)
    failed_at = int(message.split('iteration ')[1].split(':')[0])
    assert message.startswith(f'iteration {failed_at}: non-finite loss l_pix=') or 'holds NaN/inf' in message
    assert message.endswith(f'(last checkpoint: iteration {failed_at - 1})' if failed_at > 1 else
                            '(no checkpoint was written)')
    root = str(tmp_path / 'experiments' / 'nan')
    saved = sorted(int(os.path.basename(p)[6:-4]) for p in glob.glob(os.path.join(root, 'models', 'net_g_[0-9]*.pth')))
    assert saved == list(range(1, failed_at)) and leftovers(root) == []
    for path in glob.glob(os.path.join(root, 'models', '*.pth')):
        assert all(torch.isfinite(t).all() for t in extract_state_dict(load_checkpoint(path)).values())
