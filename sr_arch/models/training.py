"""Training side of ``SRArchModel``: the opt-in training features on top of basicsr's SRModel.

(Placeholder; the training features land here.)
"""
from __future__ import annotations


class TrainingMixin:
    """Mixed into basicsr's ``SRModel``; overrides its training steps."""
