"""The papers' own option files run through train.py / test.py, and each rule that makes them run.

The inputs are tests/fixtures/official/*.yml: the keys of the official files of RGT, GRFormer, HAT and
TMM25 (LabNet / RealNet), paths included. The acceptance runs adapt only what a user adapts: data (written
where the files expect it, or a path given with --force_yml) and sizes (network widths, crops, batch,
iterations, workers), and check the warnings, notes and results on disk.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import cv2
import pytest
import torch
import yaml
from basicsr.models import build_model
from basicsr.models.realesrnet_model import RealESRNetModel
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

import helpers
import sr_arch  # noqa: F401  (before basicsr)
from helpers import (
    ONE_THREAD,
    REPO_ROOT,
    SUBPROCESS_TIMEOUT,
    bicubic_downsample,
    deep_update,
    photo,
    run_script,
    write_options,
)
from sr_arch import errors
from sr_arch.errors import OptionError, OptionValidationError, SRArchError
from sr_arch.utils.official_options import resolve_official_names
from sr_arch.utils.option_keys import class_option_reads
from sr_arch.utils.option_validation import max_typo_distance, model_keys, near_miss, typo_distance, validate_options
from sr_arch.utils.options import parse_options, read_option_file, resolve_num_gpu

FIXTURES = os.path.join(REPO_ROOT, 'tests', 'fixtures', 'official')


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def load_fixture(name: str) -> dict:
    with open(fixture(name)) as f:
        return yaml.safe_load(f)


def force(**values) -> list[str]:
    """``--force_yml`` arguments: ``force(a__b=1)`` -> ['--force_yml', 'a:b=1']."""
    entries = [f'{key.replace("__", ":")}={value}' for key, value in values.items()]
    return ['--force_yml', *entries]


def write_pair(root: str, name: str, picture: str, size: int, scale: int, lr_name: str = '{}') -> None:
    """``root/HR/<name>.png`` (a size x size photo crop) and its bicubic LR ``root/LR_bicubic/X<s>/<lr_name>.png``."""
    hr = photo(picture, size)
    lr_dir = os.path.join(root, 'LR_bicubic', f'X{scale}')
    os.makedirs(os.path.join(root, 'HR'), exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    cv2.imwrite(os.path.join(root, 'HR', f'{name}.png'), hr[..., ::-1])
    cv2.imwrite(os.path.join(lr_dir, f'{lr_name.format(name)}.png'), bicubic_downsample(hr, scale)[..., ::-1])


BENCHMARKS = {'Set5': 'camera', 'Set14': 'rocket', 'B100': 'cat', 'Urban100': 'retina', 'Manga109': 'coffee'}


def write_benchmarks(root: str, scale: int, manga_lr_name: str = '{}x2') -> None:
    """One 32x32 image per benchmark set under ``root/benchmark/<set>`` (LR named ``<name>x2``)."""
    for name, picture in BENCHMARKS.items():
        write_pair(os.path.join(root, 'benchmark', name), 'img', picture, 32, scale,
                   manga_lr_name if name == 'Manga109' else '{}x2')


def write_hr_folder(folder: str, list_file: str, size: int = 128) -> None:
    """Two HR photos in ``folder`` and their names, one per line, in ``list_file`` (Real-ESRGAN's meta_info)."""
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(list_file)), exist_ok=True)
    for index, picture in enumerate(('astronaut', 'coffee')):
        cv2.imwrite(os.path.join(folder, f'{index}.png'), photo(picture, size)[..., ::-1])
    with open(list_file, 'w') as f:
        f.write('0.png\n1.png\n')


def output_lines(proc: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith(prefix)]


# ---------------------------------------------------------------------------------------------- typo rule


def test_typo_distance_counts_edits_and_swaps():
    assert typo_distance('gt_szie', 'gt_size') == 1  # swapped neighbours: one edit
    assert typo_distance('manuel_seed', 'manual_seed') == 1
    assert typo_distance('total_iters', 'total_iter') == 1
    assert typo_distance('Scale', 'scale') == 0  # case is ignored
    assert typo_distance('gt-size', 'gt_size') == 1
    assert typo_distance('task', 'type') == 3
    assert typo_distance('lq_size', 'gt_size') == 2
    assert typo_distance('', 'name') == 4
    assert [max_typo_distance(k) for k in ('name', 'val_freq', 'use_chop1', 'total_iter', 'print_network')] == \
        [1, 1, 1, 2, 2]
    assert near_miss('gt_szie', ['gt_size', 'use_rot']) == 'gt_size'
    assert near_miss('manuel_seed', ['manual_seed', 'scale']) == 'manual_seed'
    assert near_miss('lq_size', ['gt_size']) is None  # 2 edits on 7 characters: not a typo
    assert near_miss('datsets', ['datasets', 'train']) == 'datasets'
    assert near_miss('task', ['type', 'name', 'phase']) is None


def test_keys_nothing_reads_warn_and_typos_of_read_keys_fail():
    rgt, grformer_test = load_fixture('RGT_train_x2.yml'), load_fixture('GRFormer_test_light_x2.yml')
    source = 'official.yml'
    # ignored by stock BasicSR too: one warning each, no error
    warnings = validate_options(rgt, source, is_train=True, check_paths=False)
    assert warnings == [f'{source}: datasets.train.task: ignored (not read by PairedImageDataset)',
                        f'{source}: datasets.val.task: ignored (not read by PairedImageDataset)']
    warnings = validate_options(grformer_test, source, is_train=False, check_paths=False)
    assert warnings == [f'{source}: {key}: ignored (not read by sr-arch or GRModel)'
                        for key in ('suffix', 'save_img', 'print_network')]
    extra = deep_update(rgt, {'val': {'chop_size': 64}, 'logger': {'wandb': {'entity': 'me'}}})
    assert validate_options(extra, source, check_paths=False)[2:] == [
        f'{source}: val.chop_size: ignored (not read by sr-arch or RGTModel)',
        f'{source}: logger.wandb.entity: ignored (not read by sr-arch)']
    # near misses of keys that are read: errors with the suggestion
    typos = [({'datasets': {'train': {'gt_size': None, 'gt_szie': 128}}},
              ["datasets.train.gt_szie: unknown key for PairedImageDataset (did you mean 'gt_size'?)",
               'datasets.train.gt_size: missing required key (PairedImageDataset reads it)']),
             ({'manual_seed': None, 'manuel_seed': 10}, ["manuel_seed: unknown key (did you mean 'manual_seed'?)"]),
             ({'train': {'total_iter': None, 'total_iters': 5}},
              ["train.total_iters: unknown key (did you mean 'total_iter'?)",
               'train.total_iter: missing required key']),
             ({'val': {'val_freq': None, 'val_frequ': 5}}, ["val.val_frequ: unknown key (did you mean 'val_freq'?)"]),
             ({'path': {'strict_load_g': None, 'strict_laod_g': True}},
              ["path.strict_laod_g: unknown key (did you mean 'strict_load_g'?)"])]
    for overrides, expected in typos:
        with pytest.raises(OptionValidationError) as info:
            validate_options(deep_update(rgt, overrides), source, check_paths=False)
        assert str(info.value).splitlines() == [f'{source}: {line}' for line in expected], overrides
    # blocks passed as keyword arguments (networks, losses...) still refuse any unknown key, as basicsr would
    with pytest.raises(OptionValidationError, match=r'train\.pixel_opt\.task: unknown key for L1Loss\.__init__$'):
        validate_options(deep_update(rgt, {'train': {'pixel_opt': {'task': 'SR'}}}), source, check_paths=False)


def test_a_key_another_dataset_reads_is_never_a_typo():
    hat = load_fixture('HAT_train_Real_mse_x4.yml')
    hat['datasets']['train']['meta_info'] = hat['datasets']['train'].pop('meta_info_file')
    hat['datasets']['train']['filename_tmpl'] = '{}'  # read by PairedImageDataset, not by RealESRGANDataset
    warnings = validate_options(hat, 'hat.yml', check_paths=False)
    assert warnings == ['hat.yml: datasets.train.gt_size: ignored (not read by RealESRGANDataset)',
                        'hat.yml: datasets.train.filename_tmpl: ignored (not read by RealESRGANDataset)']


# ---------------------------------------------------------------------------------------------- keys from sources


def _helper(opt: dict, key: str) -> object:
    return opt.get(key)


class ReaderBase:
    def __init__(self, opt: dict) -> None:
        self.opt = opt
        self.queue = opt.get('queue_size', 180)  # read through the argument, as basicsr's RealESRNetModel does

    def setup(self) -> None:
        train_opt = self.opt['train']
        self.iters = train_opt.get('net_d_iters', 1)
        self.pixel = train_opt['pixel_opt']
        scheduler = dict(self.opt['train'].get('scheduler') or {})
        self.gamma = scheduler.get('gamma')


class Reader(ReaderBase):
    def validate(self) -> None:
        val = self.opt.get('val') or {}
        self.pbar = val.get('pbar')
        self.suffix = (self.opt.get('val') or {}).get('suffix')
        if 'flag' in self.opt:
            self.flag = self.opt['flag']
        self.helped = _helper(self.opt, 'helped')
        self.other = self.opt['network_g']['type']


def test_keys_are_found_the_way_the_code_reads_them():
    reads = class_option_reads(Reader, 'test class')
    assert reads.read() == {'queue_size', 'train', 'val', 'flag', 'helped', 'network_g'}
    assert reads.read(('train',)) == {'net_d_iters', 'pixel_opt', 'scheduler'}
    assert reads.read(('train', 'scheduler')) == {'gamma'}
    assert reads.read(('val',)) == {'pbar', 'suffix'}
    assert reads.read(('network_g',)) == {'type'}
    assert reads.required('setup', ('train',)) == {'pixel_opt'}
    assert reads.required('validate') == {'network_g'}  # 'flag' is tested for first
    # basicsr's Real-ESRNet model reads queue_size with opt.get(...) in __init__
    assert 'queue_size' in model_keys(RealESRNetModel)['top']
    real_net = model_keys(MODEL_REGISTRY.get('RealSRNetModel'))['top']
    assert {'queue_size', 'gt_usm', 'resize_prob', 'jpeg_range2'} <= real_net


def test_a_class_whose_source_cannot_be_read_fails_loudly():
    namespace: dict = {}
    exec('class Hidden(ReaderBase):\n    def feed(self):\n        return self.opt["x"]\n',
         {'ReaderBase': ReaderBase, '__name__': 'unsaved_plugin'}, namespace)
    hidden = namespace['Hidden']
    with pytest.raises(OptionError, match=r'cannot check the option keys of model \S*Hidden: its source code is not '
                                          r'readable'):
        class_option_reads(hidden, 'model')
    MODEL_REGISTRY._obj_map['HiddenModel'] = hidden
    try:
        opt = deep_update(load_fixture('RGT_train_x2.yml'), {'model_type': 'HiddenModel'})
        with pytest.raises(OptionError, match='cannot check the option keys of model'):
            validate_options(opt, 'x.yml', check_paths=False)
    finally:
        del MODEL_REGISTRY._obj_map['HiddenModel']


# ---------------------------------------------------------------------------------------------- official names


def test_official_names_resolve_with_one_note_each(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    labnet = load_fixture('TMM25_train_LabNet_x4.yml')
    notes = resolve_official_names(labnet, 'tmm.yml', is_train=True)
    assert labnet['network_g'] == {'type': 'LabNet', 'upscale': 4} and labnet['model_type'] == 'RealSRNetModel'
    assert notes == ["tmm.yml: network_g.type: LabNetGAN runs as LabNet (monakasen/TMM25's RealNet name, registered "
                     'nowhere; LabNet is the RealNet network of options/train/RealNet/)',
                     "tmm.yml: model_type: RealESRNetModel is basicsr's CUDA-only class and this run has no GPU; "
                     'running RealSRNetModel (the same training and degradation, on the CPU)']
    gan = load_fixture('TMM25_train_LabNetGAN_x4.yml')
    notes = resolve_official_names(gan, 'gan.yml', is_train=True)
    assert gan['model_type'] == 'RealSRGANModel' and gan['network_g'] == {'type': 'LabNet_STEA'}
    assert gan['train']['perceptual_opt']['type'] == 'VGGPerceptualLoss'
    assert notes[1] == ("gan.yml: train.perceptual_opt.type: PerceptualLoss (basicsr's, downloads VGG weights) runs "
                        'as VGGPerceptualLoss (same loss and options; weights only read from disk)')
    hat = load_fixture('HAT_train_Real_mse_x4.yml')
    assert resolve_official_names(hat, 'hat.yml', is_train=True) == [
        'hat.yml: datasets.train.meta_info_file: read as meta_info (RealESRGANDataset reads meta_info; the file '
        'names it meta_info_file, which it ignores)']
    assert hat['datasets']['train']['meta_info'] == 'hat/data/meta_info/meta_info_DFOsub_GT.txt'
    assert 'meta_info_file' not in hat['datasets']['train']
    # a PairedImageDataset reads meta_info_file itself: left alone
    rgt = deep_update(load_fixture('RGT_train_x2.yml'), {'datasets': {'train': {'meta_info_file': 'list.txt'}}})
    assert resolve_official_names(rgt, 'rgt.yml', is_train=True) == []
    # with a usable GPU basicsr's own Real-ESRGAN models run unchanged; num_gpu: 0 asks for the CPU
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert resolve_official_names(load_fixture('TMM25_train_LabNet_x4.yml'), 'a', True)[1:] == []
    cpu = deep_update(load_fixture('TMM25_train_LabNet_x4.yml'), {'num_gpu': 0})
    resolve_official_names(cpu, 'a', True)
    assert cpu['model_type'] == 'RealSRNetModel'


def test_plain_state_dict_initialises_the_ema_network(tmp_path, monkeypatch, capsys):
    """TMM25's LabNetx4.pth is a plain state_dict; basicsr loads pretrain_network_g into net_g_ema with key
    params_ema (KeyError before). Ours (the mapped RealSRNetModel) and basicsr's own SRModel both load it."""
    monkeypatch.chdir(tmp_path)
    write_hr_folder('DF2K', 'meta.txt', size=96)
    tiny = {'nf': 16, 'num_blocks': [1] * 6}
    weights = ARCH_REGISTRY.get('LabNet')(upscale=4, **tiny).state_dict()
    torch.save(weights, 'LabNetx4.pth')
    no_validation = deep_update(load_fixture('TMM25_train_LabNet_x4.yml'), {'datasets': {'val': None}, 'val': None})
    opt, _ = parse_options(str(tmp_path), True, ['-opt', write_options(tmp_path, no_validation), *force(
        datasets__train__dataroot_gt='DF2K', datasets__train__meta_info='meta.txt',
        path__pretrain_network_g='LabNetx4.pth', network_g__nf=16, network_g__num_blocks='[1,1,1,1,1,1]')])
    model = build_model(opt)
    assert type(model).__name__ == 'RealSRNetModel'
    for net in (model.net_g, model.net_g_ema):
        assert all(torch.equal(tensor, weights[name]) for name, tensor in net.state_dict().items())
    # basicsr's own SRModel (compat fix 3)
    hr, lr = helpers.make_paired_folder(str(tmp_path / 'pairs'), 2, ('camera',), max_side=32)
    plain = ARCH_REGISTRY.get('MSRResNet')(num_feat=8, num_block=1, upscale=2).state_dict()
    torch.save(plain, 'msr.pth')
    opt = helpers.tiny_options((hr, lr), 'stock', {'model_type': 'SRModel', 'train': {'ema_decay': 0.9},
                                                   'path': {'pretrain_network_g': 'msr.pth'}})
    opt, _ = parse_options(str(tmp_path), True, ['-opt', write_options(tmp_path, opt)])
    model = build_model(opt)
    assert type(model).__module__ == 'basicsr.models.sr_model'
    assert all(torch.equal(tensor, plain[name]) for name, tensor in model.net_g_ema.state_dict().items())


def test_missing_vgg_weights_stop_before_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    write_hr_folder('DF2K', 'meta.txt')
    torch.save({}, 'LabNetx4.pth')
    source = fixture('TMM25_train_LabNetGAN_x4.yml')
    args = ['-opt', source, *force(datasets__train__dataroot_gt='DF2K', datasets__train__meta_info='meta.txt',
                                   datasets__val__dataroot_gt='DF2K', datasets__val__dataroot_lq='DF2K',
                                   path__pretrain_network_g='LabNetx4.pth')]
    with pytest.raises(OptionValidationError) as info:
        parse_options(str(tmp_path), True, args)
    cache = os.path.join(str(tmp_path), 'torch_home', 'hub', 'checkpoints', 'vgg19-dcbb9e9d.pth')
    assert str(info.value) == (
        f'{source}: vgg19 weights for the perceptual loss (train.perceptual_opt) '
        f'not found; looked at: {tmp_path}/experiments/pretrained_models/vgg19-dcbb9e9d.pth, {cache}. Nothing is '
        f'downloaded: get https://download.pytorch.org/models/vgg19-dcbb9e9d.pth and put it at {cache} '
        "(torchvision's cache, $TORCH_HOME/hub/checkpoints) or experiments/pretrained_models/vgg19-dcbb9e9d.pth "
        "(basicsr's VGG_PRETRAIN_PATH, relative to the directory you train in), or set "
        'train.perceptual_opt.weights_path')
    assert sorted(os.listdir(tmp_path)) == ['DF2K', 'LabNetx4.pth', 'meta.txt']


# ---------------------------------------------------------------------------------------------- file formats


def test_dan_style_files_name_our_equivalent_file(tmp_path):
    for is_train, ours in ((True, 'options/train/LabNet/train_LabNet_SRx4.yml'),
                           (False, 'options/test/LabNet/test_LabNet_SRx4_Gaussian8.yml')):
        with pytest.raises(OptionError) as info:
            parse_options(str(tmp_path), is_train, ['-opt', fixture('TMM25_DAN_train_setting1_x4.yml')])
        assert str(info.value) == (
            f"{fixture('TMM25_DAN_train_setting1_x4.yml')}: not a BasicSR option file: a DAN/IKC-style file (model: "
            "blind, network_G.which_model_G: LabNet_STEA), the format of monakasen/TMM25's LabNet/codes trainer (no "
            f'model_type, network_g or io_backend); the same recipe as a BasicSR option file: {ours}')
        assert os.path.isfile(os.path.join(REPO_ROOT, ours))
    other = deep_update(load_fixture('TMM25_DAN_train_setting1_x4.yml'), {'network_G': {'which_model_G': 'NLCUnet'}})
    with pytest.raises(OptionError, match=r"sr-arch has no equivalent of network_G.which_model_G 'NLCUnet'$"):
        parse_options(str(tmp_path), True, ['-opt', write_options(tmp_path, other)])


def test_repeated_yaml_keys_are_reported_with_their_lines(tmp_path, capsys):
    _, duplicates = read_option_file(fixture('GRFormer_test_light_x2.yml'))
    assert duplicates == [f"{fixture('GRFormer_test_light_x2.yml')}:39: datasets.test_4 is given again (first at "
                          'line 32); YAML keeps only the last one, the first (name: Urban100) is ignored']
    # training files too, at any depth
    text = open(fixture('RGT_train_x2.yml')).read().replace(
        '  warmup_iter: -1\n', '  warmup_iter: -1\n  total_iter: 2\n')
    path = tmp_path / 'twice.yml'
    path.write_text(text)
    line = text.splitlines().index('  total_iter: 2') + 1
    first = text.splitlines().index('  total_iter: 500000') + 1
    with pytest.raises(OptionError):  # the data is not there; the warning comes first
        parse_options(str(tmp_path), True, ['-opt', str(path)])
    assert capsys.readouterr().out.splitlines()[0] == (
        f'warning: {path}:{line}: train.total_iter is given again (first at line {first}); YAML keeps only the last '
        'one, the first is ignored')


def test_test_runs_use_the_cpu_and_skip_training_sets(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.chdir(tmp_path)
    os.makedirs('RealWorld38')
    source = fixture('TMM25_test_LabNetGAN_x4.yml')
    opt, _ = parse_options(str(tmp_path), False, ['-opt', source, *force(
        num_gpu=1, datasets__val__dataroot_lq='RealWorld38', path__pretrain_network_g='~')])
    assert opt['num_gpu'] == 0 and list(opt['datasets']) == ['val'] and opt['model_type'] == 'RealSRGANModel'
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith('note: ')]
    assert notes == [f'note: {source}: network_g.type: LabNetGAN runs as LabNet (monakasen/TMM25\'s RealNet name, '
                     'registered nowhere; LabNet is the RealNet network of options/train/RealNet/)',
                     f"note: {source}: model_type: RealESRGANModel is basicsr's CUDA-only class and this run has no "
                     'GPU; running RealSRGANModel (the same training and degradation, on the CPU)',
                     f'note: {source}: datasets.train: skipped (a training set; testing runs the other datasets)',
                     f'note: {source}: num_gpu: 1 but 0 GPU(s) are visible; testing on the CPU']
    with pytest.raises(OptionError, match=r'num_gpu: 1 but only 0 GPU\(s\) are visible'):  # training still refuses
        resolve_num_gpu(1, 'train.yml', is_train=True)


def test_test_py_option_checkpoint_and_data_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from sr_arch import test as test_module

    monkeypatch.chdir(tmp_path)
    write_benchmarks('datasets', 2, manga_lr_name='{}_LRBI_x2')
    tiny = force(network_g__embed_dim=12, network_g__depth='[1]', network_g__num_heads='[2]')
    source = fixture('RGT_test_x2.yml')
    typo = tmp_path / 'typo.yml'
    typo.write_text(open(source).read().replace("filename_tmpl: '{}_LRBI_x2'", "filename_tmpel: '{}_LRBI_x2'"))
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    # an option error: the message alone, before anything is logged or created (the real command line)
    proc = run_script('test.py', ['-opt', str(typo), *tiny, 'path:pretrain_network_g=~'], str(tmp_path), check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"test: error: {typo}: datasets.test_5.filename_tmpel: unknown key for PairedImageDataset (did you mean "
        "'filename_tmpl'?)")
    assert not os.path.exists(tmp_path / 'results')
    # a checkpoint and a data error, found after the run started: one line after its log, no traceback
    for args, expected in ((['path:pretrain_network_g=broken.pth'],
                            'test: error: broken.pth: not a checkpoint, it is a text file'),
                           (['path:pretrain_network_g=~', "datasets:test_5:filename_tmpl='{}x2'"],
                            f'test: error: {source}: datasets.test_5 (type PairedImageDataset, ')):
        assert test_module.main(['-opt', source, *tiny, *args]) == 1
        err = capsys.readouterr().err
        assert 'Traceback' not in err and err.count('test: error: ') == 1
        assert err.strip().splitlines()[-1].startswith(expected), err[-2000:]
    assert 'cannot be built: AssertionError: imgx2.png is not in lq_paths' in err


# ---------------------------------------------------------------------------------------------- import structure


OPTION_MODULES = ('sr_arch/errors.py', 'sr_arch/utils/options.py', 'sr_arch/utils/option_validation.py',
                  'sr_arch/utils/option_keys.py', 'sr_arch/utils/official_options.py',
                  'sr_arch/utils/training_features.py', 'sr_arch/models/training.py')


def package_modules() -> dict[str, str]:
    """``{'sr_arch.utils.options': path, ...}`` for every module of the package (packages by their name)."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, 'sr_arch')):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, '.')
                modules[module[:-len('.__init__')] if module.endswith('.__init__') else module] = path
    return modules


def module_level_imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package modules ``path`` imports when it is imported (not inside functions or classes)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith('sr_arch'))
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('sr_arch'):
                found.update(f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module
                             for a in node.names)
            for block in ('body', 'orelse', 'finalbody', 'handlers'):
                visit(getattr(node, block, []))

    visit(ast.parse(open(path).read()).body)
    return found


def test_no_import_cycles_and_no_lazy_first_party_imports_in_option_modules():
    for path in OPTION_MODULES:
        tree = ast.parse(open(os.path.join(REPO_ROOT, path)).read())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                names = [node.module or ''] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                assert not any(name.startswith('sr_arch') for name in names), \
                    f'{path}: {function.name} imports {names} inside the function'
    modules = package_modules()
    graph = {module: module_level_imports(path, modules) for module, path in modules.items()}
    assert graph['sr_arch.errors'] == set()  # the leaf every module may import
    assert {'sr_arch.errors', 'sr_arch.utils.option_validation', 'sr_arch.utils.training_features'} <= \
        graph['sr_arch.utils.options']
    visiting, done, cycles = [], set(), []

    def walk(module: str) -> None:
        visiting.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported in visiting:
                cycles.append(visiting[visiting.index(imported):] + [imported])
            elif imported not in done:
                walk(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module)
    assert cycles == []
    # and the module that was in the cycle imports first in a fresh interpreter
    proc = subprocess.run([sys.executable, '-c', 'import sr_arch.utils.option_validation'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT, **ONE_THREAD))
    assert proc.returncode == 0, proc.stderr


def test_every_user_facing_error_is_an_sr_arch_error():
    from sr_arch import compare, export
    from sr_arch.data import robust_io
    from sr_arch.data.prepare import common
    from sr_arch.losses import perceptual_loss
    from sr_arch.models import realsr_model, training
    from sr_arch.utils import checkpoint, detect, dist, published

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) == 20 and all(issubclass(c, SRArchError) for c in classes)
    assert issubclass(errors.OptionError, ValueError) and issubclass(errors.CheckpointError, RuntimeError)
    # the old import locations name the same classes
    assert (checkpoint.CheckpointError, training.NonFiniteError, robust_io.BadImageError, dist.LauncherError,
            detect.DetectionError, common.PrepareError, perceptual_loss.MissingVGGWeightsError,
            realsr_model.RealDegradationError) == (errors.CheckpointError, errors.NonFiniteError, errors.BadImageError,
                                                   errors.LauncherError, errors.DetectionError, errors.PrepareError,
                                                   errors.MissingVGGWeightsError, errors.RealDegradationError)
    assert (export.ExportError, compare.CompareError, published.PublishedDataError) == (
        errors.ExportError, errors.CompareError, errors.PublishedDataError)
    assert issubclass(errors.ExportError, RuntimeError) and issubclass(errors.PublishedDataError, ValueError)


# ---------------------------------------------------------------------------------------------- acceptance runs


def test_a_typo_stops_the_official_file_before_any_folder(tmp_path):
    source = tmp_path / 'train_RGT_x2.yml'
    source.write_text(open(fixture('RGT_train_x2.yml')).read().replace('gt_size: 128', 'gt_szie: 128'))
    proc = run_script('train.py', ['-opt', str(source)], str(tmp_path), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"train: error: {source}: datasets.train.gt_szie: unknown key for PairedImageDataset (did you mean 'gt_size'?)",
        f'{source}: datasets.train.gt_size: missing required key (PairedImageDataset reads it)',
        f"{source}: datasets.train.dataroot_gt: folder 'datasets/DF2K/HR' does not exist",
        f"{source}: datasets.train.dataroot_lq: folder 'datasets/DF2K/LR_bicubic/X2' does not exist",
        f"{source}: datasets.val.dataroot_gt: folder 'datasets/benchmark/Set5/HR' does not exist",
        f"{source}: datasets.val.dataroot_lq: folder 'datasets/benchmark/Set5/LR_bicubic/X2' does not exist"]
    assert sorted(os.listdir(tmp_path)) == ['train_RGT_x2.yml']


RGT_SIZES = dict(network_g__embed_dim=12, network_g__depth='[1,1]', network_g__num_heads='[2,2]')


@pytest.mark.slow
def test_official_rgt_x2_train_and_test_files_run(tmp_path):
    root = str(tmp_path)
    for index, picture in enumerate(('astronaut', 'coffee')):
        write_pair(os.path.join(root, 'datasets', 'DF2K'), f'{index:04d}', picture, 96, 2, '{}x2')
    write_benchmarks(os.path.join(root, 'datasets'), 2, manga_lr_name='{}_LRBI_x2')
    train = run_script('train.py', ['-opt', fixture('RGT_train_x2.yml'), *force(
        train__total_iter=2, datasets__train__gt_size=64, datasets__train__batch_size_per_gpu=2,
        datasets__train__num_worker_per_gpu=0, **RGT_SIZES)], root)
    assert len(output_lines(train, 'warning: ')) == 2 and 'datasets.train.task: ignored' in train.stdout
    weights = os.path.join(root, 'experiments', 'train_RGT_x2_P64_DF2K_B8G4_tain', 'models', 'net_g_latest.pth')
    assert os.path.isfile(weights)
    test = run_script('test.py', ['-opt', fixture('RGT_test_x2.yml'), *force(path__pretrain_network_g=weights,
                                                                             **RGT_SIZES)], root)
    assert output_lines(test, 'note: ') == [f"note: {fixture('RGT_test_x2.yml')}: num_gpu: 1 but 0 GPU(s) are "
                                            'visible; testing on the CPU']
    summary = json.loads(open(os.path.join(root, 'results', 'test_RGT_x2', 'summary.json')).read())
    assert list(summary) == list(BENCHMARKS) and all(summary[name]['psnr'] > 5 for name in BENCHMARKS)
    sr = cv2.imread(os.path.join(root, 'results', 'test_RGT_x2', 'visualization', 'Manga109',
                                 'img_LRBI_x2_test_RGT_x2.png'))  # val.save_img: true; named after the LR file
    assert sr.shape == (32, 32, 3)


GRFORMER_SIZES = dict(network_g__embed_dim=12, network_g__depths='[1]', network_g__num_heads='[2]')


@pytest.mark.slow
def test_official_grformer_light_x2_train_and_test_files_run(tmp_path):
    run = tmp_path / 'run'  # the official files read ../datasets
    run.mkdir()
    for index, picture in enumerate(('astronaut', 'coffee')):
        write_pair(str(tmp_path / 'datasets' / 'DIV2K'), f'{index:04d}', picture, 96, 2, '{}x2')
    write_benchmarks(str(tmp_path / 'datasets'), 2)
    train = run_script('train.py', ['-opt', fixture('GRFormer_train_light_x2.yml'), *force(
        num_gpu=0, train__total_iter=2, datasets__train__gt_size=64, datasets__train__batch_size_per_gpu=2,
        datasets__train__num_worker_per_gpu=0, **GRFORMER_SIZES)], str(run))
    assert output_lines(train, 'warning: ') == [f"warning: {fixture('GRFormer_train_light_x2.yml')}: print_network: "
                                                'ignored (not read by sr-arch or GRModel)']
    weights = run / 'experiments' / 'train_GRFormer_SRx2_scratch' / 'models' / 'net_g_latest.pth'
    test = run_script('test.py', ['-opt', fixture('GRFormer_test_light_x2.yml'), *force(
        path__pretrain_network_g=str(weights), **GRFORMER_SIZES)], str(run))
    warnings = output_lines(test, 'warning: ')
    assert warnings[0] == (f"warning: {fixture('GRFormer_test_light_x2.yml')}:39: datasets.test_4 is given again "
                           '(first at line 32); YAML keeps only the last one, the first (name: Urban100) is ignored')
    assert len(warnings) == 4  # and suffix, save_img, print_network
    summary = json.loads((run / 'results' / 'GRFormer_light_X2' / 'summary.json').read_text())
    assert list(summary) == ['Set5', 'Set14', 'B100', 'Manga109']


@pytest.mark.slow
def test_official_real_hat_mse_file_runs(tmp_path):
    write_hr_folder(str(tmp_path / 'datasets' / 'DFO' / 'DFO_sub'),
                    str(tmp_path / 'hat' / 'data' / 'meta_info' / 'meta_info_DFOsub_GT.txt'))
    proc = run_script('train.py', ['-opt', fixture('HAT_train_Real_mse_x4.yml'), *force(
        train__total_iter=2, gt_size=64, datasets__train__batch_size_per_gpu=1, datasets__train__num_worker_per_gpu=0,
        network_g__embed_dim=30, network_g__depths='[1]', network_g__num_heads='[2]')], str(tmp_path))
    assert "datasets.train.meta_info_file: read as meta_info (RealESRGANDataset reads meta_info" in proc.stdout
    saved = torch.load(tmp_path / 'experiments' / 'train_Real_HAT_mse_model' / 'models' / 'net_g_latest.pth',
                       weights_only=True)
    assert set(saved) == {'params', 'params_ema'}
    assert all(torch.isfinite(t).all() for t in saved['params'].values())


@pytest.mark.slow
def test_official_tmm25_train_labnet_x4_file_runs(tmp_path):
    write_hr_folder(str(tmp_path / 'DF2K'), str(tmp_path / 'meta_info_DF2Kmultiscale.txt'))
    for folder in ('HR', 'LRblur'):
        os.makedirs(tmp_path / 'Set5' / folder)
    hr = photo('camera', 384)  # NIQE needs a few 96-pixel blocks of SR output
    cv2.imwrite(str(tmp_path / 'Set5' / 'HR' / 'camera.png'), hr[..., ::-1])
    cv2.imwrite(str(tmp_path / 'Set5' / 'LRblur' / 'camera.png'), bicubic_downsample(hr, 4)[..., ::-1])
    source = fixture('TMM25_train_LabNet_x4.yml')
    proc = run_script('train.py', ['-opt', source, *force(
        datasets__train__dataroot_gt=tmp_path / 'DF2K',
        datasets__train__meta_info=tmp_path / 'meta_info_DF2Kmultiscale.txt',
        datasets__val__dataroot_gt=tmp_path / 'Set5' / 'HR', datasets__val__dataroot_lq=tmp_path / 'Set5' / 'LRblur',
        train__total_iter=2, gt_size=64, datasets__train__num_worker_per_gpu=0, network_g__nf=16,
        network_g__num_blocks='[1,1,1,1,1,1]')], str(tmp_path))
    notes = output_lines(proc, 'note: ')
    assert [re.sub(r' \(.*', '', line.split(': ', 2)[2]) for line in notes] == [
        'network_g.type: LabNetGAN runs as LabNet',
        "model_type: RealESRNetModel is basicsr's CUDA-only class and this run has no GPU; running RealSRNetModel"]
    experiment = tmp_path / 'experiments' / 'train_RealNetx4plus_1000k_B12G4'
    log = next(experiment.glob('train_*.log')).read_text()
    assert re.search(r'# niqe: \d+\.\d+', log) and re.search(r'# psnr: \d+\.\d+', log)
    saved = torch.load(experiment / 'models' / 'net_g_latest.pth', weights_only=True)
    # network_kwargs: what the weights' shapes cannot tell infer/export (LabNet's bicubic residual mode)
    assert set(saved) == {'params', 'params_ema', 'network_kwargs'}
    assert set(saved['network_kwargs']) == {'residual_antialias'}
    sr = cv2.imread(str(experiment / 'visualization' / 'camera' / 'camera_2.png'))  # val.save_img: true
    assert sr.shape == hr.shape
