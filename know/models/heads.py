"""One way to find and replace a classifier head, for our models and timm's alike (transfer learning)."""
import torch.nn as nn


def get_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """(attribute path, module) of the final classifier."""
    if hasattr(model, "get_classifier"):  # timm
        head = model.get_classifier()
        for name, m in model.named_modules():
            if m is head:
                return name, head
    for attr in ("head", "fc"):
        if isinstance(getattr(model, attr, None), nn.Linear):
            return attr, getattr(model, attr)
    raise ValueError(f"cannot find the classifier head of {type(model).__name__}")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the head for a freshly initialised one with `num_classes` outputs (in place; returns the model)."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return model
    name, head = get_head(model)
    new = nn.Linear(head.in_features, num_classes).to(head.weight.device)
    parent = model
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)
    return model
