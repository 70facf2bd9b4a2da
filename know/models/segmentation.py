"""DeepLabV3+ for semantic segmentation (T-D), built by segmentation_models_pytorch (smp), plus its head.

`deeplabv3plus` wraps `smp.DeepLabV3Plus` as a registered builder: `classes=num_classes`, `in_channels=in_chans`,
`encoder_weights=None` always (a builder never downloads; the paper profile's ImageNet backbone arrives as a
state_dict file through `ForgetCfg.init`); `decoder_aspp_dropout` defaults to 0 (KerasCV's SpatialPyramidPooling
has no dropout; smp's default of 0.5 would also draw from the global RNG in the shared training loop, which
`know.train.train_epoch` does not seed); every other kwarg goes to smp: encoder_name, encoder_depth,
encoder_output_stride, decoder_channels, decoder_atrous_rates, decoder_aspp_separable, decoder_aspp_dropout,
upsampling, and, for timm encoders ("tu-<name>"), any keyword of the timm model (smp passes its unknown kwargs on to
`timm.create_model`, e.g. `channels`, `stem_width`, `stem_type`). smp silently ignores those extra kwargs for its own
(non "tu-") encoders, so the builder refuses them there instead. `img_size` is ignored (fully convolutional; smp
only requires sides divisible by the encoder's output stride).

The two leads (docs/method.md §8):
- cpu profile: `CPU_LEAD` = tu-resnet18 at channels (16, 32, 64, 128), output stride 16, 32 decoder channels, atrous
  rates (1, 2, 3) (the 4x4 ASPP input of a 64x64 canvas), plain (non-separable) ASPP: 847,451 parameters for 11
  classes and RGB. Note: timm's `stem_width` only widens a *deep* stem (stem_type "deep*"); with the default 7x7
  stem it is a no-op and the stem stays 64 channels wide.
- paper profile: `PAPER_LEAD` = timm's ResNet-50 ("tu-resnet50"; smp's own "resnet50" is the same network in
  torchvision's key layout, "tu-resnetv2_50" is the pre-activation ResNet50V2 of the KerasCV guide), output stride
  16, atrous rates (6, 12, 18), non-separable ASPP and 256 decoder channels like KerasCV's SpatialPyramidPooling:
  39,210,341 parameters for VOC's 21 classes (tu-resnetv2_50: 39,198,565).
  What smp fixes, and how KerasCV's DeepLabV3Plus differs: the low-level projection is 48 channels in both (smp
  hard-codes it; KerasCV's `projection_filters` default); smp follows the ASPP with a depthwise-separable 3x3 conv +
  BN + ReLU and fuses with another separable 3x3 conv + BN + ReLU, where KerasCV fuses with one 1x1 conv + BN + ReLU;
  smp's classifier is a 1x1 conv with a bias, KerasCV's has none; KerasCV taps an undilated backbone at stride 32
  (P5, upsampled x8), smp dilates the last stage(s) to the output stride.

`get_segmentation_head` / `replace_segmentation_head` are the segmentation twins of `know.models.get_head` /
`replace_head` (transfer learning swaps the pixel classifier for the downstream classes).
"""
from __future__ import annotations

from torch import nn

from know.errors import KnowError
from know.models.registry import register

CPU_LEAD = dict(encoder_name="tu-resnet18", encoder_output_stride=16, decoder_channels=32,
                decoder_atrous_rates=(1, 2, 3), decoder_aspp_separable=False, channels=(16, 32, 64, 128),
                stem_width=16)
PAPER_LEAD = dict(encoder_name="tu-resnet50", encoder_output_stride=16, decoder_channels=256,
                  decoder_atrous_rates=(6, 12, 18), decoder_aspp_separable=False)
ASPP_DROPOUT = 0.0  # KerasCV's SpatialPyramidPooling default (smp's: 0.5)

_SMP_KWARGS = ("encoder_name", "encoder_depth", "encoder_output_stride", "decoder_channels", "decoder_atrous_rates",
               "decoder_aspp_separable", "decoder_aspp_dropout", "activation", "upsampling", "aux_params")


@register("deeplabv3plus")
def deeplabv3plus(num_classes: int = 21, in_chans: int = 3, img_size: int = 32, **kwargs) -> nn.Module:
    """smp's DeepLabV3+ with random weights (see the module docstring for the kwargs)."""
    import segmentation_models_pytorch as smp

    if kwargs.pop("encoder_weights", None) is not None:
        raise KnowError("deeplabv3plus never downloads encoder weights: load pretrained weights through "
                        "--forget.init=<state_dict file> instead of encoder_weights")
    if kwargs.get("aux_params") is not None:
        raise KnowError("deeplabv3plus: aux_params (a second, classification output) is not supported")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}  # JSON lists -> tuples
    encoder = kwargs.get("encoder_name", "resnet34")
    extra = sorted(k for k in kwargs if k not in _SMP_KWARGS)
    if extra and not encoder.startswith("tu-"):
        raise KnowError(f"deeplabv3plus: {', '.join(extra)} only reach timm encoders ('tu-<name>'); smp ignores "
                        f"them for its own encoder '{encoder}'")
    kwargs.setdefault("decoder_aspp_dropout", ASPP_DROPOUT)
    return smp.DeepLabV3Plus(encoder_weights=None, in_channels=in_chans, classes=num_classes, **kwargs)


def get_segmentation_head(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(parameter-name prefix, module) of the pixel classifier: smp's `segmentation_head` conv."""
    head = getattr(model, "segmentation_head", None)
    conv = head[0] if isinstance(head, nn.Sequential) and len(head) else head
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"cannot find the segmentation head of {type(model).__name__}")
    return ("segmentation_head.0" if conv is not head else "segmentation_head"), conv


def replace_segmentation_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the pixel classifier for a fresh one with `num_classes` outputs (in place; returns the model).

    Same kernel size, padding and bias as the old one; Glorot-uniform kernel and zero bias, which is both smp's head
    init and Keras' Conv2D default (KerasCV's DeepLabV3+ head), drawn from the global RNG: the caller seeds it."""
    name, old = get_segmentation_head(model)
    new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None)
    nn.init.xavier_uniform_(new.weight)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    *path, last = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return model
