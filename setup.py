"""Installs the ``sr_arch`` package and the ``sr-arch`` console command."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(HERE, 'sr_arch', '__init__.py')) as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip("'\"")
    raise RuntimeError('sr_arch/__init__.py has no __version__')


setup(
    name='sr-arch',
    version=read_version(),
    description='HAT, RGT, GRFormer, ESRT and LabNet super-resolution transformers as a BasicSR plug-in',
    long_description=open(os.path.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sr_arch', 'sr_arch.*']),
    package_data={'sr_arch': ['data/*.yaml']},  # published_results.yaml
    python_requires='>=3.10',
    # torch / torchvision are pinned to the pair that installs from this project's wheel cache.
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'basicsr==1.4.2',
        'numpy>=1.24',
        'opencv-python>=4.8',
        'lmdb>=1.4',
        'tensorboard>=2.14',
        'pyyaml>=6.0',
        'tqdm>=4.66',
        'scikit-image>=0.22',  # basicsr needs it; the demo and tests use its bundled photos
        'safetensors>=0.4',  # .safetensors checkpoints (read and written)
    ],
    extras_require={
        # pytest 9 ignores the node ids that xdist's --dist loadgroup rewrites: grouped tests would spread over workers
        'dev': ['pytest>=8,<9', 'pytest-xdist>=3.5', 'ruff>=0.6'],
        # sr-arch export to ONNX (torch's dynamo exporter needs onnxscript), its onnxruntime check, spandrel loading
        'export': ['onnx>=1.16', 'onnxscript>=0.5', 'onnxruntime>=1.18', 'spandrel>=0.4.2,<0.5'],
    },
    entry_points={'console_scripts': ['sr-arch=sr_arch.cli:main']},
)
