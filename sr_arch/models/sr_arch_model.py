"""``SRArchModel``: basicsr's ``SRModel`` with what every network of this package needs.

The inference side (padding, tiling, self-ensemble, validation) is ``InferenceMixin`` in
``inference.py``; the training side (AMP, accumulation, clipping, atomic checkpoints…) is
``TrainingMixin`` in ``training.py``. Per-family models (``HATModel``, ``RGTModel``…) are thin
subclasses that only say what input sizes their network needs.
"""
from __future__ import annotations

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.models.inference import InferenceMixin
from sr_arch.models.training import TrainingMixin


@MODEL_REGISTRY.register()
class SRArchModel(InferenceMixin, TrainingMixin, SRModel):
    """SRModel + ``InferenceMixin`` + ``TrainingMixin``; the default ``model_type`` of our option files."""
