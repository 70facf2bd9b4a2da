import pytest
import torch
import torch.nn as nn

from know.errors import UnknownName
from know.models import create_model, get_head, list_models, replace_head


@pytest.mark.parametrize("name,in_chans,classes", [
    ("simplenet", 1, 10), ("simplenet", 3, 100), ("resnet18_know", 3, 10), ("debugnet", 1, 4),
    ("timm:resnet18", 1, 10), ("timm:vit_tiny_patch16_224", 3, 10), ("timm:pvt_v2_b0", 3, 10),
])
def test_output_shapes(name, in_chans, classes):
    kw = {"width": 0.125} if name == "resnet18_know" else {}
    model = create_model(name, num_classes=classes, in_chans=in_chans, **kw).eval()
    out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownName, match="resnet18_know.*simplenet"):
        create_model("resnet19")
    assert "timm:<name>" in list_models()


def _resnet18_know_param_count(c_in=3, classes=100):
    """Closed form for the official Keras graph: convs with bias, BN with gamma/beta, 3 projection shortcuts."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731  (trainable gamma, beta)
    n = conv(c_in, 64, 7) + bn(64)
    c_prev = 64
    for c in (64, 128, 256, 512):
        n += conv(c_prev, c, 3) + bn(c) + conv(c, c, 3) + bn(c)  # block a
        if c != c_prev or c != 64:
            n += conv(c_prev, c, 1) + bn(c)
        n += 2 * (conv(c, c, 3) + bn(c))  # block b
        c_prev = c
    return n + 512 * classes + classes


def test_resnet18_know_has_the_papers_structure():
    m = create_model("resnet18_know", num_classes=100)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert len(convs) == 20 and len(bns) == 20  # stem + 16 block convs + 3 projections
    assert sum(c.kernel_size == (1, 1) for c in convs) == 3
    assert convs[0].kernel_size == (7, 7) and convs[0].stride == (1, 1)
    assert all(c.bias is not None for c in convs)  # Keras Conv2D default use_bias=True
    assert all(b.eps == 1e-3 and abs(b.momentum - 0.01) < 1e-12 for b in bns)
    assert sum(p.numel() for p in m.parameters()) == _resnet18_know_param_count() == 11_232_612
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    # stage 1 at 34x34 (stem pad 1, no pooling); 128-channel stage keeps stride 1; last two stages halve
    feats = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: feats.__setitem__(name, o.shape))
    m.eval()(torch.randn(1, 3, 32, 32))
    assert [feats[k][-1] for k in ("layer1", "layer2", "layer3", "layer4")] == [34, 34, 17, 9]


def test_resnet18_know_width_scales_channels():
    m = create_model("resnet18_know", num_classes=10, width=0.25)
    assert m.conv1.out_channels == 16 and m.fc.in_features == 128


@pytest.mark.parametrize("name", ["simplenet", "resnet18_know", "timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_replace_head(name):
    kw = {"width": 0.125} if name == "resnet18_know" else {}
    m = create_model(name, num_classes=100, **kw)
    replace_head(m, 7)
    assert get_head(m)[1].out_features == 7
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_img_size_reaches_size_dependent_models():
    m = create_model("simplenet", num_classes=10, in_chans=1, img_size=64)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 10)
