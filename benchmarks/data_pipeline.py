"""Images/s of one training epoch of simplenet on Fashion-MNIST: device-resident batched pipeline vs DataLoader.

Both sides train the same model with the same optimizer, batch size and augmentation (rotation ±10°, shift 0.15,
zoom 0.3, nearest fill). Resident: the data is one tensor on the device, batches are index slices, augmentation is
one affine_grid/grid_sample per batch (know.data). Reference: torch.utils.data.DataLoader over a Dataset applying
torchvision transforms per sample (num_workers=2). Prints both rates and the ratio (target >= 3x on 2 cores).

    .venv/bin/python benchmarks/data_pipeline.py [--images 60000] [--batch-size 128]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T

from know.data import Augment, batches, get_dataset
from know.models import create_model


class PerSampleDataset(torch.utils.data.Dataset):
    """The usual pipeline: uint8 images, per-sample transforms in worker processes."""

    def __init__(self, images, labels, mean):
        self.images, self.labels, self.mean = images, labels, mean
        self.tf = T.Compose([T.ToDtype(torch.float32, scale=True),
                             T.RandomAffine(degrees=10, translate=(0.15, 0.15), scale=(0.7, 1.3))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tf(self.images[i]) - self.mean, self.labels[i]


def train_steps(model, opt, batch_iter):
    n = 0
    for x, y in batch_iter:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n


def resident_epoch(data, n, batch_size):
    model = create_model("simplenet", num_classes=10, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    aug, g = Augment(), torch.Generator().manual_seed(0)
    it = ((aug(data.x[idx], g), data.y[idx]) for idx in batches(n, batch_size, g))
    t = time.perf_counter()
    seen = train_steps(model, opt, it)
    return seen / (time.perf_counter() - t)


def dataloader_epoch(data, n, batch_size, workers):
    model = create_model("simplenet", num_classes=10, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.round((data.x[:n] + data.mean) * 255).to(torch.uint8)  # the uint8 images a DataLoader starts from
    ds = PerSampleDataset(images, data.y[:n], data.mean)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    t = time.perf_counter()
    seen = train_steps(model, opt, loader)
    return seen / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=60000, help="images per epoch (default: all of Fashion-MNIST)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = get_dataset("fashion_mnist", "train")
    n = min(args.images, len(data))
    resident = resident_epoch(data, n, args.batch_size)
    print(f"device-resident batched pipeline: {resident:8.0f} images/s")
    loader = dataloader_epoch(data, n, args.batch_size, args.workers)
    print(f"DataLoader + per-sample transforms (num_workers={args.workers}): {loader:8.0f} images/s")
    print(f"ratio: {resident / loader:.2f}x (target >= 3x)")
    print(json.dumps({"resident_img_s": round(resident), "dataloader_img_s": round(loader),
                      "ratio": round(resident / loader, 2), "images": n, "threads": args.threads}))


if __name__ == "__main__":
    main()
