"""``sr-arch prepare``: every step on the scikit-image photos, corrupt images, interruption and resume."""
from __future__ import annotations

import os
import re
import shutil

import cv2
import lmdb
import numpy as np
import pytest
import torch
import yaml

from helpers import TRAIN_PHOTOS, bicubic_downsample, photo, run_script
from sr_arch import prepare
from sr_arch.data.degradations import mod_crop
from sr_arch.data.prepare import benchmarks, bicubic, gaussian8, lmdb_store, meta_info, subimages
from sr_arch.data.prepare.common import CorruptImageError, PrepareError

MAX_SIDE = 150  # photos are centre-cropped to at most this per side: every test stays fast


def small_photo_bgr(name: str, max_side: int = MAX_SIDE) -> np.ndarray:
    img = photo(name)
    h, w = img.shape[:2]
    th, tw = min(h, max_side), min(w, max_side)
    top, left = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(img[top:top + th, left:left + tw, ::-1])


def write_photos(folder: str, names=TRAIN_PHOTOS, max_side: int = MAX_SIDE, ext: str = '.png') -> dict[str, np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    images = {}
    for i, name in enumerate(names):
        # odd sizes on purpose (151 is not a multiple of 2, 3 or 4)
        img = small_photo_bgr(name, max_side + (i % 2))
        cv2.imwrite(os.path.join(folder, name + ext), img)
        images[name] = cv2.imread(os.path.join(folder, name + ext), cv2.IMREAD_UNCHANGED)
    return images


def error_lines(text: str) -> list[str]:
    """The lines of stderr that are errors (progress bars write there too)."""
    return [line for line in text.splitlines() if 'error:' in line]


def truncate_file(path: str, keep: float = 0.5) -> None:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


def all_files(root: str) -> dict[str, bytes]:
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def image_files(root: str) -> dict[str, np.ndarray]:
    return {rel: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            for rel, data in all_files(root).items() if rel.endswith('.png')}


@pytest.fixture(scope='module')
def hr_folder(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    folder = str(tmp_path_factory.mktemp('photos') / 'HR')
    return folder, write_photos(folder)


# ---------------------------------------------------------------------------------------------- bicubic


def test_bicubic_is_matlab_imresize_of_the_mod_cropped_hr(tmp_path, hr_folder):
    src, images = hr_folder
    result = bicubic.generate_bicubic(src, str(tmp_path / 'X{s}'), scales=[2, 3, 4], suffix='x{s}',
                                      hr_output=str(tmp_path / 'GTmod{s}'))
    assert result.outputs == {s: str(tmp_path / f'X{s}') for s in (2, 3, 4)}
    for s in (2, 3, 4):
        lr_files = image_files(str(tmp_path / f'X{s}'))
        assert sorted(lr_files) == sorted(f'{n}x{s}.png' for n in images)
        for name, hr in images.items():
            h, w = hr.shape[0] - hr.shape[0] % s, hr.shape[1] - hr.shape[1] % s
            gt = cv2.imread(str(tmp_path / f'GTmod{s}' / f'{name}.png'))
            assert np.array_equal(gt, hr[:h, :w])
            expected = bicubic_downsample(np.ascontiguousarray(hr[:h, :w, ::-1]), s)[..., ::-1]
            assert lr_files[f'{name}x{s}.png'].shape == (h // s, w // s, 3)
            assert np.array_equal(lr_files[f'{name}x{s}.png'], expected)
    assert not any(p.name.endswith('.partial') for p in tmp_path.iterdir())


def test_bicubic_needs_the_scale_placeholder_for_several_scales(tmp_path, hr_folder):
    with pytest.raises(PrepareError, match=r"--output .*needs the placeholder \{s\}"):
        bicubic.generate_bicubic(hr_folder[0], str(tmp_path / 'LR'), scales=[2, 4])


# ---------------------------------------------------------------------------------------------- sub-images


def basicsr_positions(size: int, crop: int, step: int, thresh: int) -> list[int]:
    """BasicSR's extract_subimages rule, written out independently."""
    space = list(np.arange(0, size - crop + 1, step))
    if size - (space[-1] + crop) > thresh:
        space.append(size - crop)
    return [int(v) for v in space]


@pytest.mark.parametrize('size, crop, step, thresh', [(480, 480, 240, 0), (1356, 480, 240, 0), (2040, 480, 240, 0),
                                                      (150, 64, 32, 0), (151, 64, 32, 20), (100, 40, 40, 0)])
def test_crop_positions_follow_basicsr(size, crop, step, thresh):
    assert subimages.crop_positions(size, crop, step, thresh) == basicsr_positions(size, crop, step, thresh)


def test_subimages_pair_hr_and_lr_by_name_and_position(tmp_path, hr_folder):
    src, images = hr_folder
    bicubic.generate_bicubic(src, str(tmp_path / 'X2'), scales=[2], suffix='x2', hr_output=str(tmp_path / 'HR'))
    hr_result = subimages.extract_subimages(str(tmp_path / 'HR'), str(tmp_path / 'HR_sub'), crop_size=64, step=32)
    lr_result = subimages.extract_subimages(str(tmp_path / 'X2'), str(tmp_path / 'X2_sub'), crop_size=64, step=32,
                                            scale=2, workers=2)
    hr_subs, lr_subs = image_files(str(tmp_path / 'HR_sub')), image_files(str(tmp_path / 'X2_sub'))
    assert sorted(hr_subs) == sorted(lr_subs)  # 'x2' dropped from the LR names
    assert hr_result.subimages == lr_result.subimages == len(hr_subs)
    name = TRAIN_PHOTOS[1]
    hr = cv2.imread(str(tmp_path / 'HR' / f'{name}.png'))
    lr = cv2.imread(str(tmp_path / 'X2' / f'{name}x2.png'))
    tops = basicsr_positions(hr.shape[0], 64, 32, 0)
    lefts = basicsr_positions(hr.shape[1], 64, 32, 0)
    assert len([k for k in hr_subs if k.startswith(f'{name}_s')]) == len(tops) * len(lefts)
    index = len(lefts) + 2  # second row, second column: sub-image k is row-major from 1
    top, left = tops[1], lefts[1]
    assert np.array_equal(hr_subs[f'{name}_s{index:03d}.png'], hr[top:top + 64, left:left + 64])
    assert np.array_equal(lr_subs[f'{name}_s{index:03d}.png'], lr[top // 2:top // 2 + 32, left // 2:left // 2 + 32])


def test_subimages_only_strips_a_trailing_scale_suffix():
    assert subimages.strip_scale_suffix('0001x2', 2) == '0001'
    assert subimages.strip_scale_suffix('box2x2', 2) == 'box2'  # BasicSR would give 'bo'
    assert subimages.strip_scale_suffix('0001x3', 2) == '0001x3'


def test_subimages_refuse_a_crop_the_scale_does_not_divide(tmp_path, hr_folder):
    with pytest.raises(PrepareError, match='--crop-size 100 is not divisible by --scale 3'):
        subimages.extract_subimages(hr_folder[0], str(tmp_path / 'out'), crop_size=100, step=48, scale=3)


# ---------------------------------------------------------------------------------------------- lmdb


def test_lmdb_has_basicsr_layout_and_verifies(tmp_path, hr_folder):
    from basicsr.data.data_util import paired_paths_from_lmdb
    from basicsr.utils import FileClient, imfrombytes

    src, images = hr_folder
    bicubic.generate_bicubic(src, str(tmp_path / 'X2'), scales=[2], hr_output=str(tmp_path / 'HR'))
    hr_db = lmdb_store.build_lmdb(str(tmp_path / 'HR'), workers=2)
    lr_db = lmdb_store.build_lmdb(str(tmp_path / 'X2'))
    assert hr_db.output == str(tmp_path / 'HR.lmdb') and hr_db.images == len(images)
    assert sorted(os.listdir(hr_db.output)) == ['data.mdb', 'lock.mdb', 'meta_info.txt']
    with open(os.path.join(hr_db.output, 'meta_info.txt')) as f:
        lines = f.read().splitlines()
    first = sorted(images)[0]
    h, w = images[first].shape[0] // 2 * 2, images[first].shape[1] // 2 * 2
    assert lines[0] == f'{first}.png ({h},{w},3) 1'
    assert len(lines) == len(images)

    paths = paired_paths_from_lmdb([lr_db.output, hr_db.output], ['lq', 'gt'])
    client = FileClient('lmdb', db_paths=[lr_db.output, hr_db.output], client_keys=['lq', 'gt'])
    gt = imfrombytes(client.get(first, 'gt'), float32=False)
    for env in client.client._client.values():  # py-lmdb opens an environment once per process
        env.close()
    assert len(paths) == len(images)
    assert np.array_equal(gt, cv2.imread(str(tmp_path / 'HR' / f'{first}.png')))

    assert lmdb_store.verify_lmdb(hr_db.output, str(tmp_path / 'HR')).ok
    # the folder changes: one image differs, one is new -> both reported by name
    tampered = str(tmp_path / 'HR' / f'{first}.png')
    cv2.imwrite(tampered, 255 - cv2.imread(tampered))
    shutil.copy(tampered, str(tmp_path / 'HR' / 'extra.png'))
    report = lmdb_store.verify_lmdb(hr_db.output, str(tmp_path / 'HR'))
    assert not report.ok
    assert any(tampered in p and 'differ' in p for p in report.problems)
    assert any("'extra' missing from the database" in p for p in report.problems)


def test_lmdb_refuses_keys_basicsr_cannot_read_back(tmp_path, hr_folder):
    folder = tmp_path / 'odd'
    folder.mkdir()
    shutil.copy(os.path.join(hr_folder[0], f'{TRAIN_PHOTOS[0]}.png'), folder / 'a.b.png')
    with pytest.raises(PrepareError, match=r'a\.b\.png: LMDB keys must be ASCII without spaces or dots'):
        lmdb_store.build_lmdb(str(folder))


# ---------------------------------------------------------------------------------------------- meta-info


@pytest.fixture()
def imagenet_like(tmp_path) -> str:
    """Two class folders of JPEGs: normal ones, one small, one truncated, one with a space in its name."""
    root = tmp_path / 'ImageNet' / 'GT'
    for i, name in enumerate(TRAIN_PHOTOS):
        folder = root / f'n0{i % 2}'
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f'n0{i % 2}_{i}.JPEG'), small_photo_bgr(name))
    cv2.imwrite(str(root / 'n00' / 'tiny.JPEG'), small_photo_bgr(TRAIN_PHOTOS[0], 40))
    truncate_file(str(root / 'n01' / 'n01_1.JPEG'))
    cv2.imwrite(str(root / 'n01' / 'with space.JPEG'), small_photo_bgr(TRAIN_PHOTOS[0]))
    return str(root)


def test_meta_info_lists_usable_images_and_counts_the_rest(tmp_path, imagenet_like):
    out = str(tmp_path / 'meta_info' / 'meta_info_ImageNet_GT.txt')
    result = meta_info.generate_meta_info(imagenet_like, out, min_size=64)
    with open(out) as f:
        lines = f.read().splitlines()
    listed = [line.split(' ')[0] for line in lines]
    assert listed == sorted(listed) and len(listed) == len(TRAIN_PHOTOS) - 1 == result.kept
    assert all(re.fullmatch(r'n0[01]/n0[01]_\d\.JPEG \(\d+,\d+,3\)', line) for line in lines)
    assert 'n01/n01_1.JPEG' not in listed
    assert result.skipped['smaller than --min-size 64'] == ['n00/tiny.JPEG']
    assert result.skipped['unreadable'][0].startswith('n01/n01_1.JPEG (')
    assert result.skipped['whitespace in the path'] == ['n01/with space.JPEG']
    assert result.summary().startswith(f'{out}: 5 images listed, 3 skipped')
    with pytest.raises(CorruptImageError, match='n01_1.JPEG'):
        meta_info.generate_meta_info(imagenet_like, str(tmp_path / 'strict.txt'), min_size=64, on_error='stop')


def test_imagenet_dataset_reads_the_meta_info(tmp_path, imagenet_like):
    from basicsr.data import build_dataset

    out = str(tmp_path / 'meta_info.txt')
    meta_info.generate_meta_info(imagenet_like, out, min_size=64)
    dataset = build_dataset(dict(name='ImageNet', type='ImageNetPairedDataset', dataroot_gt=imagenet_like,
                                 meta_info_file=out, io_backend=dict(type='disk'), scale=2, gt_size=64,
                                 use_hflip=True, use_rot=True, phase='train'))
    sample = dataset[0]
    assert len(dataset) == len(TRAIN_PHOTOS) - 1
    assert sample['gt'].shape == (3, 64, 64) and sample['lq'].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------- benchmarks


def make_downloads(root: str) -> dict[str, np.ndarray]:
    """Three download layouts with odd-sized originals: EDSR (Set5), BasicSR GTmod12 (Set14), SelfExSR (B100)."""
    originals = {name: small_photo_bgr(name, 90 + i) for i, name in enumerate(TRAIN_PHOTOS[:3])}
    a, b, c = originals
    edsr = os.path.join(root, 'benchmark', 'Set5')
    os.makedirs(os.path.join(edsr, 'HR'))
    os.makedirs(os.path.join(edsr, 'LR_bicubic', 'X2'))
    cv2.imwrite(os.path.join(edsr, 'HR', f'{a}.png'), originals[a])
    cv2.imwrite(os.path.join(edsr, 'LR_bicubic', 'X2', f'{a}x2.png'), bicubic.downsample(originals[a], 2))
    # an LR of another crop: must not be used
    cv2.imwrite(os.path.join(edsr, 'HR', f'{b}.png'), originals[b])
    cv2.imwrite(os.path.join(edsr, 'LR_bicubic', 'X2', f'{b}x2.png'), bicubic.downsample(originals[b][:40, :40], 2))
    basic = os.path.join(root, 'Set14')
    os.makedirs(os.path.join(basic, 'GTmod12'))
    os.makedirs(os.path.join(basic, 'LRbicx4'))
    cv2.imwrite(os.path.join(basic, 'GTmod12', f'{c}.bmp'), mod_crop(originals[c], 12))
    cv2.imwrite(os.path.join(basic, 'LRbicx4', f'{c}.png'), bicubic.downsample(mod_crop(originals[c], 12), 4))
    selfexsr = os.path.join(root, 'extra', 'BSDS100')
    for s in (2, 4):
        os.makedirs(os.path.join(selfexsr, f'image_SRF_{s}'))
        cv2.imwrite(os.path.join(selfexsr, f'image_SRF_{s}', f'img_001_SRF_{s}_HR.png'),
                    mod_crop(originals[a], s))
        cv2.imwrite(os.path.join(selfexsr, f'image_SRF_{s}', f'img_001_SRF_{s}_LR.png'),
                    bicubic.downsample(originals[a], s))
    return originals


def test_benchmarks_layout_from_common_downloads(tmp_path):
    from basicsr.data import build_dataset

    originals = make_downloads(str(tmp_path / 'downloads'))
    a, b, c = originals
    dest = str(tmp_path / 'benchmark')
    result = benchmarks.prepare_benchmarks(str(tmp_path / 'downloads'), dest, scales=[2, 4])
    assert result.images == {'Set5': 2, 'Set14': 1, 'B100': 1}
    assert result.not_found == ['Urban100', 'Manga109']
    assert result.lr_copied == {'Set5': 1, 'Set14': 1, 'B100': 2}
    assert result.lr_generated == {'Set5': 3, 'Set14': 1, 'B100': 0}  # missing or of another crop
    tree = image_files(dest)
    assert sorted(tree) == sorted(f'{d}/{sub}/{n}.png' for d, n in (('Set5', a), ('Set5', b), ('Set14', c),
                                                                     ('B100', 'img_001'))
                                  for sub in ('HR', 'LR_bicubic/X2', 'LR_bicubic/X4'))
    assert np.array_equal(tree[f'Set5/HR/{a}.png'], originals[a])  # the original, not cropped
    assert np.array_equal(tree[f'Set14/HR/{c}.png'], mod_crop(originals[c], 12))
    assert np.array_equal(tree['B100/HR/img_001.png'], mod_crop(originals[a], 2))  # the largest SRF HR
    for rel, img in tree.items():
        match = re.search(r'/LR_bicubic/X(\d)/', rel)
        if match:
            s = int(match.group(1))
            hr = tree[rel.replace(f'LR_bicubic/X{s}', 'HR')]
            assert img.shape[:2] == (hr.shape[0] // s, hr.shape[1] // s), rel
    assert np.array_equal(tree[f'Set5/LR_bicubic/X2/{b}.png'], bicubic.downsample(originals[b], 2))

    dataset = build_dataset(dict(name='Set5', type='PairedImageDataset', dataroot_gt=f'{dest}/Set5/HR',
                                 dataroot_lq=f'{dest}/Set5/LR_bicubic/X4', io_backend=dict(type='disk'), scale=4,
                                 phase='val'))
    sample = dataset[0]
    assert sample['gt'].shape[-2:] == tuple(4 * v for v in sample['lq'].shape[-2:])  # GT is scored as GTmod4


def test_benchmarks_adds_a_missing_scale_to_an_existing_layout(tmp_path, capsys):
    originals = make_downloads(str(tmp_path / 'downloads'))
    dest = str(tmp_path / 'benchmark')
    benchmarks.prepare_benchmarks(str(tmp_path / 'downloads'), dest, scales=[2, 4])
    before = {rel: os.stat(os.path.join(dest, rel)).st_mtime_ns for rel in all_files(dest)}
    assert prepare.main(['benchmarks', '--source', str(tmp_path / 'downloads'), '--dest', dest,
                         '--scales', '2', '3', '4']) == 0
    out = capsys.readouterr().out
    assert f'{dest}/Set5 exists without X3: adding it' in out and f'{dest}/Set5: 2 images' in out
    assert f'{dest}/Set14: 1 image, LR: 0 from the download, 1 generated' in out  # not '1 images'
    tree = image_files(dest)
    assert sorted(rel for rel in tree if '/X3/' in rel) == sorted(f'{rel.split("/")[0]}/LR_bicubic/X3/'
                                                                  f'{rel.split("/")[-1]}' for rel in tree
                                                                  if '/HR/' in rel)
    for rel, img in tree.items():
        if '/X3/' in rel:
            assert np.array_equal(img, bicubic.downsample(tree[rel.replace('LR_bicubic/X3', 'HR')], 3)), rel
    assert all(os.stat(os.path.join(dest, rel)).st_mtime_ns == t for rel, t in before.items())  # only X3 written
    assert not [p for p in os.listdir(os.path.join(dest, 'Set5', 'LR_bicubic')) if p.endswith('.partial')]
    assert benchmarks.prepare_benchmarks(str(tmp_path / 'downloads'), dest, scales=[3]).skipped_complete == [
        f'{dest}/{name}' for name in ('Set5', 'Set14', 'B100')]
    assert len(originals) == 3
    # the downloads may be gone by now: the layout's own HR is enough
    x3 = all_files(os.path.join(dest, 'Set14', 'LR_bicubic', 'X3'))
    shutil.rmtree(os.path.join(dest, 'Set14', 'LR_bicubic', 'X3'))
    shutil.rmtree(tmp_path / 'downloads')
    os.makedirs(tmp_path / 'downloads')
    result = benchmarks.prepare_benchmarks(str(tmp_path / 'downloads'), dest, scales=[3], sets=['Set14'])
    assert result.images == {'Set14': 1} and all_files(os.path.join(dest, 'Set14', 'LR_bicubic', 'X3')) == x3


def test_benchmarks_list_the_folders_found_when_no_set_is_recognised(tmp_path, capsys):
    for folder in ('Set_5', 'downloads/urban-100', 'downloads/misc'):
        os.makedirs(tmp_path / 'src' / folder)
    assert prepare.main(['benchmarks', '--source', str(tmp_path / 'src'), '--dest', str(tmp_path / 'out')]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f'no benchmark set found under {tmp_path / "src"}' in err[0]
    assert err[0].endswith('folders found there: Set_5, downloads, downloads/misc, downloads/urban-100')
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------- gaussian8


def test_gaussian8_layout_content_and_resume(tmp_path, capsys, monkeypatch):
    from sr_arch.data.degradations import degrade, gaussian_kernel

    src, out = tmp_path / 'benchmark', tmp_path / 'g8'
    for name in ('cat', 'coffee', 'rocket'):
        os.makedirs(src / 'Set5' / 'HR', exist_ok=True)
        cv2.imwrite(str(src / 'Set5' / 'HR' / f'{name}.png'), small_photo_bgr(name, 64)[:61, :45])
    args = ['gaussian8', '--input', str(src), '--output', str(out), '--scales', '2']
    assert prepare.main(args) == 0
    printed = capsys.readouterr().out
    assert f'{out}/Set5/X2: 3 images, HR + 8 blur widths' in printed
    assert f'not found under {src}: Set14, B100, Urban100, Manga109' in printed
    root = out / 'Set5' / 'X2'
    widths = ['sig0.80', 'sig0.91', 'sig1.03', 'sig1.14', 'sig1.26', 'sig1.37', 'sig1.49', 'sig1.60']
    assert sorted(os.listdir(root)) == sorted(['HR'] + widths)
    hr = cv2.imread(str(root / 'HR' / 'cat.png'))
    assert hr.shape == (60, 44, 3)
    lr = cv2.imread(str(root / 'sig1.49' / 'cat.png'))
    expected = degrade(torch.from_numpy(hr.astype(np.float32) / 255).permute(2, 0, 1),
                       gaussian_kernel(21, float(np.linspace(0.8, 1.6, 8)[6])), 2)
    assert np.array_equal(lr, np.round(expected.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    reference = all_files(str(root))
    assert len(reference) == 27

    assert prepare.main(args) == 0  # a finished set is skipped, not rewritten
    assert 'already exists: skipped' in capsys.readouterr().out

    # killed half-way: nothing under the final name; the same command finishes it, identical to a straight run
    resumed = tmp_path / 'resumed'
    with monkeypatch.context() as patch:
        fail_after(patch, gaussian8, 'write_png', 12)
        with pytest.raises(Interrupt):
            gaussian8.generate_gaussian8(str(src), str(resumed), [2])
    assert not (resumed / 'Set5' / 'X2').exists() and (resumed / 'Set5' / 'X2.partial').exists()
    pool_sizes = []  # --workers reaches the pool (run with processes in the subimages and lmdb tests)

    def run_tasks(func, tasks, workers=0, desc='', unit='img'):
        pool_sizes.append(workers)
        return map(func, tasks)

    monkeypatch.setattr(gaussian8, 'run_tasks', run_tasks)
    assert prepare.main(['gaussian8', '--input', str(src), '--output', str(resumed), '--scales', '2',
                         '--workers', '2']) == 0
    assert pool_sizes == [2] and all_files(str(resumed / 'Set5' / 'X2')) == reference

    assert prepare.main(args[:-2] + ['--scales', '2', '--sets', 'Urban100']) == 1
    assert f'HR folder(s) not found: {src}/Urban100/HR' in capsys.readouterr().err
    assert prepare.main(['gaussian8', '--input', str(tmp_path / 'g8'), '--output', str(tmp_path / 'x')]) == 1
    assert 'none of Set5, Set14, B100, Urban100, Manga109 found as' in capsys.readouterr().err


def test_gaussian8_bad_images_follow_on_error(tmp_path, capsys):
    folder = tmp_path / 'benchmark' / 'Set14' / 'HR'
    write_photos(str(folder), TRAIN_PHOTOS[:2], max_side=40)
    bad = str(folder / f'{TRAIN_PHOTOS[0]}.png')
    truncate_file(bad)
    args = ['gaussian8', '--input', str(tmp_path / 'benchmark'), '--output', str(tmp_path / 'g8'), '--scales', '3']
    assert prepare.main(args) == 1
    err = capsys.readouterr().err
    assert bad in err and '--on-error skip' in err and 'Traceback' not in err
    assert prepare.main(args + ['--on-error', 'skip']) == 0
    assert f'skipped 1 unreadable image(s):\n  {bad}: cannot be decoded' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'g8' / 'Set14' / 'X3' / 'HR')) == [f'{TRAIN_PHOTOS[1]}.png']


# ---------------------------------------------------------------------------------------------- nothing produced


@pytest.mark.parametrize('step', ['subimages', 'bicubic', 'lmdb', 'benchmarks', 'gaussian8'])
def test_a_step_that_writes_nothing_fails_and_marks_nothing_complete(tmp_path, capsys, step):
    folder = tmp_path / 'Set5' / 'HR'
    write_photos(str(folder), TRAIN_PHOTOS[:2], max_side=40)
    for name in os.listdir(folder):
        truncate_file(str(folder / name))
    output = {'subimages': tmp_path / 'sub', 'bicubic': tmp_path / 'X2', 'lmdb': tmp_path / 'Set5' / 'HR.lmdb',
              'benchmarks': tmp_path / 'benchmark' / 'Set5', 'gaussian8': tmp_path / 'g8' / 'Set5' / 'X2'}[step]
    args = {'subimages': ['--input', str(folder), '--output', str(output), '--crop-size', '16', '--step', '8'],
            'bicubic': ['--input', str(folder), '--output', str(output), '--scales', '2'],
            'lmdb': ['--input', str(folder)],
            'benchmarks': ['--source', str(tmp_path), '--dest', str(tmp_path / 'benchmark'), '--scales', '2'],
            'gaussian8': ['--input', str(tmp_path), '--output', str(tmp_path / 'g8'), '--scales', '2']}[step]
    assert prepare.main([step, *args, '--on-error', 'skip']) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and 'nothing written' in err[0] and 'skipped 2 unreadable image(s)' in err[0]
    assert not output.exists() and not os.path.exists(f'{output}.partial')


def test_subimages_with_a_crop_larger_than_every_image_fail_and_leave_nothing(tmp_path, hr_folder, capsys):
    src = hr_folder[0]
    out = tmp_path / 'sub'
    assert prepare.main(['subimages', '-i', src, '-o', str(out), '--crop-size', '480']) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f'no sub-images written: all {len(TRAIN_PHOTOS)} images in {src} are smaller than the ' \
        'crop (480x480 pixels)' in err[0] and 'pass a smaller --crop-size' in err[0]
    assert not out.exists() and not os.path.exists(f'{out}.partial')
    assert prepare.main(['subimages', '-i', src, '-o', str(out), '--crop-size', '96', '--step', '48']) == 0
    assert f'{out}: {9 * len(TRAIN_PHOTOS)} sub-images from {len(TRAIN_PHOTOS)} images' in capsys.readouterr().out


def test_hr_sides_that_are_not_multiples_of_the_scale_are_named_at_prepare_time(tmp_path, hr_folder, capsys):
    """write_photos makes every other photo 151 pixels wide and high: its x2 LR covers 150 HR pixels."""
    src, images = hr_folder
    odd = sorted(n for n, img in images.items() if img.shape[0] % 2)
    lr = str(tmp_path / 'X2')
    bicubic.generate_bicubic(src, lr, scales=[2])
    crops = ['--crop-size', '50', '--step', '50']  # 150 = 3 x 50: an extra border crop on 151 only
    assert prepare.main(['subimages', '-i', src, '-o', str(tmp_path / 'HR_sub'), *crops]) == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith('warning:')]
    # (a crop of 50 rules out x3 and x4 LR runs)
    assert len(warning) == 1 and f'{len(odd)} images of {len(images)} have sides that are not multiples of 2 ' \
        in warning[0] and f'{src}/{odd[0]}.png (151x151)' in warning[0] and '--align 12' in warning[0]
    assert prepare.main(['subimages', '-i', lr, '-o', str(tmp_path / 'X2_sub'), *crops, '--scale', '2']) == 0
    # the trap the warning is about: more HR than LR sub-images
    assert len(os.listdir(tmp_path / 'HR_sub')) > len(os.listdir(tmp_path / 'X2_sub'))

    for name, scale in (('HR_sub12', 1), ('X2_sub12', 2)):
        source = src if scale == 1 else lr
        assert prepare.main(['subimages', '-i', source, '-o', str(tmp_path / name), *crops, '--align', '12',
                             '--scale', str(scale)]) == 0
    assert 'warning' not in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'HR_sub12')) == sorted(os.listdir(tmp_path / 'X2_sub12'))

    assert prepare.main(['bicubic', '-i', src, '-o', str(tmp_path / 'B{s}'), '--scales', '2', '3']) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 2 and all("--hr-output 'HR_X{s}'" in w for w in warnings)
    assert f'{len(odd)} HR images of {src} are not a multiple of 2 (e.g. {odd[0]}.png (151x151)' in warnings[0]
    assert f'{len(odd)} HR images of {src} are not a multiple of 3' in warnings[1]


# ---------------------------------------------------------------------------------------------- bad images


@pytest.mark.parametrize('step', ['subimages', 'bicubic', 'lmdb', 'benchmarks'])
def test_corrupt_png_is_reported_by_name(tmp_path, capsys, step):
    folder = tmp_path / 'Set5' / 'HR'
    write_photos(str(folder), TRAIN_PHOTOS[:3], max_side=64)
    bad = str(folder / f'{TRAIN_PHOTOS[1]}.png')
    truncate_file(bad)
    args = {'subimages': ['--input', str(folder), '--output', str(tmp_path / 'out'), '--crop-size', '32',
                          '--step', '16'],
            'bicubic': ['--input', str(folder), '--output', str(tmp_path / 'X{s}'), '--scales', '2'],
            'lmdb': ['--input', str(folder)],
            'benchmarks': ['--source', str(tmp_path), '--dest', str(tmp_path / 'benchmark'), '--scales', '2']}[step]
    assert prepare.main([step, *args]) == 1
    err = capsys.readouterr().err
    assert bad in err and 'Traceback' not in err and '--on-error skip' in err
    assert prepare.main([step, *args, '--on-error', 'skip']) == 0
    out = capsys.readouterr().out
    assert f'skipped 1 unreadable image(s):\n  {bad}: cannot be decoded' in out


# ---------------------------------------------------------------------------------------------- interruption


class Interrupt(Exception):
    pass


def fail_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make ``module.name`` raise ``Interrupt`` on call number ``calls + 1`` (a kill half-way)."""
    original = getattr(module, name)
    count = {'n': 0}

    def wrapped(*args, **kwargs):
        count['n'] += 1
        if count['n'] > calls:
            raise Interrupt(f'simulated interruption in {name}')
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_interrupted_subimages_leave_no_output_and_resume(tmp_path, hr_folder, monkeypatch):
    src = hr_folder[0]
    reference = str(tmp_path / 'reference')
    subimages.extract_subimages(src, reference, crop_size=64, step=32)

    out = str(tmp_path / 'HR_sub')
    with monkeypatch.context() as patch:
        fail_after(patch, subimages, 'write_png', 7)
        with pytest.raises(Interrupt):
            subimages.extract_subimages(src, out, crop_size=64, step=32)
    assert not os.path.exists(out)
    written = image_files(out + '.partial')
    assert len(written) == 7 and all(img is not None for img in written.values())  # nothing half-written
    # a temporary file a kill left mid-write is cleaned up, settings must match to resume
    with open(os.path.join(out + '.partial', '.x_s001.png.123.tmp'), 'wb') as f:
        f.write(b'\x89PNG half')
    with pytest.raises(PrepareError, match=r'other settings \(crop_size: 64 -> 48\)'):
        subimages.extract_subimages(src, out, crop_size=48, step=32)
    subimages.extract_subimages(src, out, crop_size=64, step=32)
    assert not os.path.exists(out + '.partial')
    assert all_files(out) == all_files(reference)
    again = subimages.extract_subimages(src, out, crop_size=64, step=32)
    assert again.skipped_complete


def test_interrupted_lmdb_keeps_committed_work_and_resumes(tmp_path, hr_folder, monkeypatch):
    src = hr_folder[0]
    monkeypatch.setattr(lmdb_store, '_COMMIT_IMAGES', 2)
    out = str(tmp_path / 'HR.lmdb')
    with monkeypatch.context() as patch:
        fail_after(patch, lmdb_store, 'encode_png', 4)
        with pytest.raises(Interrupt):
            lmdb_store.build_lmdb(src, out)
    assert not os.path.exists(out)
    assert not os.path.exists(os.path.join(out + '.partial', 'meta_info.txt'))
    env = lmdb.open(out + '.partial', readonly=True, lock=False)
    assert env.stat()['entries'] == 4  # two committed transactions of two images
    env.close()
    resumed = lmdb_store.build_lmdb(src, out)
    assert resumed.images == len(TRAIN_PHOTOS)
    assert lmdb_store.verify_lmdb(out, src).ok


def test_interrupted_meta_info_resumes(tmp_path, imagenet_like, monkeypatch):
    reference = str(tmp_path / 'reference.txt')
    meta_info.generate_meta_info(imagenet_like, reference, min_size=64)
    out = str(tmp_path / 'meta_info.txt')
    with monkeypatch.context() as patch:
        fail_after(patch, meta_info, 'read_image', 3)
        with pytest.raises(Interrupt):
            meta_info.generate_meta_info(imagenet_like, out, min_size=64)
    assert not os.path.exists(out) and os.path.exists(out + '.partial')
    with open(out + '.partial', 'a') as f:
        f.write('n00/half-written-line')  # a kill in the middle of a line
    meta_info.generate_meta_info(imagenet_like, out, min_size=64)
    assert not os.path.exists(out + '.partial')
    with open(out) as f, open(reference) as g:
        assert f.read() == g.read()


# ---------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize('step', sorted(prepare.STEPS))
def test_every_step_has_help(step, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([step, '--help'])
    assert exit_info.value.code == 0
    assert f'usage: sr-arch prepare {step}' in capsys.readouterr().out


def test_prepare_usage_lists_every_step_and_help_is_plain_text(capsys):
    assert prepare.main([]) == 0
    usage = capsys.readouterr().out
    assert all(f'  {step} ' in usage for step in prepare.STEPS) and '  gaussian8 ' in usage
    assert prepare.main(['nope']) == 2
    for step in prepare.STEPS:
        with pytest.raises(SystemExit):
            prepare.main([step, '--help'])
        text = capsys.readouterr().out
        assert '``' not in text and not re.search(r':\w+:`', text), step  # no reStructuredText markup


# ---------------------------------------------------------------------------------------------- training


def test_training_reads_lmdb_and_folder_outputs(tmp_path):
    """train.py on the prepared data: train from LMDB sub-images, validate on a benchmark folder and an LMDB."""
    src = str(tmp_path / 'photos')
    write_photos(src, TRAIN_PHOTOS, max_side=120)
    bicubic.generate_bicubic(src, str(tmp_path / 'X2'), scales=[2], suffix='x2', hr_output=str(tmp_path / 'HR'))
    subimages.extract_subimages(str(tmp_path / 'HR'), str(tmp_path / 'HR_sub'), crop_size=64, step=48)
    subimages.extract_subimages(str(tmp_path / 'X2'), str(tmp_path / 'X2_sub'), crop_size=64, step=48, scale=2)
    hr_db = lmdb_store.build_lmdb(str(tmp_path / 'HR_sub')).output
    lr_db = lmdb_store.build_lmdb(str(tmp_path / 'X2_sub')).output
    layout = tmp_path / 'downloads' / 'Set5'
    write_photos(str(layout), TRAIN_PHOTOS[:2], max_side=48)
    bench = benchmarks.prepare_benchmarks(str(tmp_path / 'downloads'), str(tmp_path / 'benchmark'), scales=[2])
    val_hr_db = lmdb_store.build_lmdb(str(tmp_path / 'benchmark/Set5/HR'), str(tmp_path / 'Set5_HR.lmdb')).output
    val_lr_db = lmdb_store.build_lmdb(str(tmp_path / 'benchmark/Set5/LR_bicubic/X2'),
                                      str(tmp_path / 'Set5_X2.lmdb')).output
    assert bench.images == {'Set5': 2}

    opt = {
        'name': 'prepared_data', 'model_type': 'SRArchModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'sub', 'type': 'PairedImageDataset', 'dataroot_gt': hr_db, 'dataroot_lq': lr_db,
                      'io_backend': {'type': 'lmdb'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                      'use_shuffle': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                      'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
            'val_1': {'name': 'Set5_folder', 'type': 'PairedImageDataset',
                      'dataroot_gt': str(tmp_path / 'benchmark/Set5/HR'),
                      'dataroot_lq': str(tmp_path / 'benchmark/Set5/LR_bicubic/X2'), 'io_backend': {'type': 'disk'}},
            'val_2': {'name': 'Set5_lmdb', 'type': 'PairedImageDataset', 'dataroot_gt': val_hr_db,
                      'dataroot_lq': val_lr_db, 'io_backend': {'type': 'lmdb'}},
        },
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                      'upscale': 2},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10],
                                                                          'gamma': 0.5},
                  'total_iter': 2, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    opt_path = str(tmp_path / 'opt.yml')
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f)
    run_script('train.py', ['-opt', opt_path], cwd=str(tmp_path))
    log_dir = tmp_path / 'experiments' / 'prepared_data'
    log = ''.join(p.read_text() for p in log_dir.glob('*.log'))
    for name in ('Set5_folder', 'Set5_lmdb'):
        assert re.search(rf'Validation {name}\s+# psnr: \d+\.\d+', log), log[-2000:]
    assert (log_dir / 'models' / 'net_g_latest.pth').is_file()
