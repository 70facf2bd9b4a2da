"""Model registry: `create_model(name, num_classes=..., in_chans=..., **kwargs)`.

Registered: `simplenet` (the meta-dataset CNN), `resnet18_know` (the paper's ResNet-18 variant, `width` multiplier),
`debugnet` (tiny, for tests) and any timm model as `timm:<name>`.
"""
from know.models import debugnet, resnet_know, segmentation, simplenet  # noqa: F401  (registers the builders)
from know.models.heads import get_head, replace_head
from know.models.registry import create_model, list_models, register

__all__ = ["create_model", "list_models", "register", "get_head", "replace_head", "main"]


def main(argv: list[str]) -> int:
    """`know models`: the registered names and a parameter count of each at default settings."""
    import argparse

    argparse.ArgumentParser(prog="know models", description=main.__doc__).parse_args(argv)
    for name in list_models():
        if name.startswith("timm:"):
            print(f"{name:16s} any model of timm.list_models(), in_chans/num_classes/img_size from the dataset")
            continue
        n = sum(p.numel() for p in create_model(name, num_classes=10).parameters())
        print(f"{name:16s} {n:>12,d} parameters (10 classes)")
    return 0
