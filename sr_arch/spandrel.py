"""Our networks in spandrel (chaiNNer, ComfyUI): ``sr_arch.spandrel.install()``.

spandrel 0.4.2 ships HAT and RGT (its copies of the official code, which load our checkpoints with equal outputs)
but not GRFormer, ESRT or LabNet. ``install()`` adds every family of ``sr_arch.archs.FAMILIES`` that spandrel does
not know to its ``MAIN_REGISTRY``, as ``spandrel_extra_arches.install()`` does for its extra architectures::

    import spandrel
    import sr_arch.spandrel

    sr_arch.spandrel.install()
    model = spandrel.ModelLoader().load_from_file('net_g_latest.pth')  # or .safetensors
    sr = model(lr)  # (1, 3, H, W) in [0, 1] -> (1, 3, sH, sW), clamped by spandrel

Detection is each family's own ``FamilySpec.detect`` plus a check that the built network has exactly the
checkpoint's names and shapes, so a family only claims its own checkpoints; ours are asked before spandrel's
architectures. The descriptor carries the scale, the size requirements of ``FamilySpec.size_rules`` (minimum side,
multiple of the pad size) and the published variant's name (or the detected sizes) as tag. spandrel only sees the
weights: arguments no shape tells (``FamilySpec.checkpoint.stored_kwargs``, LabNet's ``residual_antialias``) take
the constructor default, i.e. the value our training recipes use; the official LabNet releases were trained with
``residual_antialias: false`` (docs/labnet.md), set ``model.model.residual_antialias = False`` for them.
"""
from __future__ import annotations

from typing import Any, Mapping

from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
)
from torch import Tensor, nn

from sr_arch.archs import FAMILIES
from sr_arch.archs.spec import FamilySpec, NotThisFamily
from sr_arch.utils.detect import Detection, build_on_meta, compare_state_dicts, match_variant, state_dict_shapes


def detect_family(spec: FamilySpec, state_dict: Mapping[str, Any]) -> Detection | None:
    """The detection of ``state_dict`` as ``spec``'s family, or None when it is not exactly one of its networks.

    Uses the family's ``detect``, then builds the network on the meta device and requires identical names and
    shapes; never raises (spandrel asks every architecture about every checkpoint).
    """
    if not state_dict or not all(isinstance(v, Tensor) for v in state_dict.values()):
        return None
    shapes = state_dict_shapes(state_dict)
    try:
        inferred = spec.detect(shapes, state_dict)
        variant, kwargs = match_variant(spec.name, inferred)
        expected = state_dict_shapes(build_on_meta(spec.name, kwargs).state_dict())
    except (NotThisFamily, KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None
    if any(compare_state_dicts(expected, shapes)):
        return None
    return Detection(spec.name, kwargs, variant)


class FamilyArchitecture(Architecture[nn.Module]):
    """A spandrel ``Architecture`` for one of our families (id and name: the family's registry name)."""

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        super().__init__(id=spec.name, name=spec.name, detect=lambda state_dict: self.detection(state_dict) is not None)

    def detection(self, state_dict: Mapping[str, Any]) -> Detection | None:
        return detect_family(self.spec, state_dict)

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor[nn.Module]:
        """The network of ``state_dict`` (weights loaded strictly by spandrel's descriptor) and what it needs."""
        detection = self.detection(state_dict)
        if detection is None:
            raise ValueError(f'not a {self.spec.name} state_dict (names or shapes differ)')
        net = self.spec.cls(**detection.kwargs)
        rules = self.spec.size_rules(detection.kwargs)
        channels = int(detection.kwargs.get('in_chans', 3))
        return ImageModelDescriptor(
            net, dict(state_dict), architecture=self, purpose='SR', tags=[_tag(detection)],
            supports_half=False,  # float16 accuracy of these networks is not verified; bfloat16 is
            supports_bfloat16=True, scale=detection.scale, input_channels=channels, output_channels=channels,
            size_requirements=SizeRequirements(minimum=rules.min_size, multiple_of=rules.pad_multiple),
            tiling=ModelTiling.SUPPORTED)


def _tag(detection: Detection) -> str:
    """'GRFormer-light' for a published variant, else the detected sizes."""
    if detection.variant is not None:
        return detection.variant
    return detection.describe().rsplit(' x', 1)[0]


def architectures() -> list[ArchSupport]:
    """One ``ArchSupport`` per family spandrel does not ship, detected before spandrel's own architectures."""
    native = sorted(support.architecture.id for support in MAIN_REGISTRY
                    if not isinstance(support.architecture, FamilyArchitecture))
    supports = []
    for name, spec in FAMILIES.items():
        if name not in native:
            architecture = FamilyArchitecture(spec)
            supports.append(ArchSupport(architecture, architecture.detect, before=tuple(native)))
    return supports


def registry() -> ArchRegistry:
    """A registry holding only our architectures (``spandrel.ModelLoader(registry=...)``)."""
    own = ArchRegistry()
    own.add(*architectures())
    return own


def install(*, ignore_duplicates: bool = False) -> list[ArchSupport]:
    """Add our families that spandrel does not ship (GRFormer, ESRT, LabNet) to spandrel's ``MAIN_REGISTRY``.

    Calling it twice raises spandrel's ``DuplicateArchitectureError`` unless ``ignore_duplicates`` (then the
    installed ones stay). Returns the added ``ArchSupport`` entries.
    """
    return MAIN_REGISTRY.add(*architectures(), ignore_duplicates=ignore_duplicates)
