"""KNOWN, the element-wise hyper-model of KNOW prediction, and its weights.

KNOWN reads the last `window` snapshots of one scalar weight (most-forgotten first, Θ0 last) together with their
first differences, and predicts a tanh-bounded increment over the newest value. The graph follows
docs/known_spec.md exactly (two branches, one exp term per branch, LeakyReLU 0.3, tanh head).

Weights come from three places:
- the authors' Keras files (`load_official`), looked up by layer name; `find_weights` finds, downloads and
  sha256-checks them and is shared with other Keras imports (e.g. WNN);
- our own meta-trained models (`save_known` / `load_known`), safetensors with JSON metadata.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from know.errors import UnknownName, WeightsError
from know.io import atomic_write

LEAKY_SLOPE = 0.3  # Keras LeakyReLU default (PyTorch's default is 0.01)


# ----------------------------------------------------------------------------------------------------------------
# The model


class Branch(nn.Module):
    """One KNOWN branch: lift to `width`, a TrAct-exp block with one exp term, project, LeakyReLU(0.3)."""

    def __init__(self, n_in: int, width: int, compressed: int, proj: int):
        super().__init__()
        self.lift = nn.Linear(n_in, width)
        self.compress = nn.Linear(width, compressed)  # followed by ReLU
        self.additive = nn.Linear(compressed, width)
        self.gain = nn.Linear(compressed, width)  # multiplies the exp term
        self.rate = nn.Linear(compressed, width)  # multiplies h inside the exp
        self.project = nn.Linear(width, proj)  # followed by LeakyReLU(0.3)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h = self.lift(inp)  # (N, width)
        z = F.relu(self.compress(h))  # (N, compressed)
        t = self.additive(z) + self.gain(z) * torch.exp(self.rate(z) * h)  # (N, width)
        return F.leaky_relu(self.project(t), LEAKY_SLOPE)  # (N, proj)


class KNOWN(nn.Module):
    """Element-wise weight predictor: (x, dx) -> increment in (-1, 1) over x[:, -1].

    Args:
        window: snapshots per scalar (the paper's S = 5); x has `window` columns, dx one fewer.
        width, compressed, proj: branch widths (64, 8, 32 in the release; 9,425 parameters for window 5).
    """

    def __init__(self, window: int = 5, width: int = 64, compressed: int = 8, proj: int = 32):
        super().__init__()
        if window < 2:
            raise ValueError(f"KNOWN needs window >= 2 (dx has window-1 columns), got {window}")
        self.window, self.width, self.compressed, self.proj = window, width, compressed, proj
        self.branch_x = Branch(window, width, compressed, proj)
        self.branch_dx = Branch(window - 1, width, compressed, proj)
        self.head = nn.Linear(2 * proj, 1)  # followed by tanh
        self.meta: dict = {}  # where the weights came from (filled by the loaders)
        self.reset_parameters()

    @property
    def arch(self) -> dict[str, int]:
        return dict(window=self.window, width=self.width, compressed=self.compressed, proj=self.proj)

    def reset_parameters(self) -> None:
        """Keras initialisers of the official builder (our meta-training starts from the same distribution)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # Keras glorot_uniform default
                nn.init.zeros_(m.bias)
        for b in (self.branch_x, self.branch_dx):
            for lin in (b.lift, b.project):  # VarianceScaling(0.1, fan_in, uniform) in KNOWN.py
                bound = math.sqrt(3 * 0.1 / lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound)

    def forward(self, x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """x (N, window), dx (N, window-1) -> (N, 1): the reference graph, layer by layer as in Keras (the fast
        inference path is `know.fastknown.FastKNOWN`)."""
        a = self.branch_x(x)  # (N, proj)
        b = self.branch_dx(dx)  # (N, proj)
        return torch.tanh(self.head(torch.cat([a, b], dim=1)))  # (N, 1)

    @torch.inference_mode()
    def step(self, window_values: torch.Tensor) -> torch.Tensor:
        """One KNOW step on raw snapshots (N, window), oldest first -> the new value (N,), float32.

        dx is the float32 difference of the window, as in the official helpers; new = x[:, -1] + KNOWN(x, dx).
        """
        x = window_values.to(torch.float32)
        if x.ndim != 2 or x.shape[1] != self.window:
            raise ValueError(f"step expects (N, {self.window}) values, got {tuple(x.shape)}")
        return x[:, -1] + self(x, x[:, 1:] - x[:, :-1])[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# Finding weight files (shared by every Keras import)

KNOWN_URL_BASE = "https://raw.githubusercontent.com/jjh6297/KNOW/main"
KNOWN_ENV = "KNOW_WEIGHTS_DIR"
OFFLINE_ENV = "KNOW_OFFLINE"  # set to 1 to never download
DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class OfficialFile:
    filename: str
    sha256: str
    size: int = 94_416  # bytes (all three KNOWN files); quoted when a copy looks truncated


# kind -> the authors' file (sha256 of the blobs in jjh6297/KNOW at bbf6963)
OFFICIAL_KNOWN: dict[str, OfficialFile] = {
    "conv": OfficialFile("KNOWN_Conv.h5", "b66f1cadf41cba243d70ce38ef01a9da3466ca7a3723c9bafa2d3ca359bfada6"),
    "fc": OfficialFile("KNOWN_FC.h5", "e34bcc8f1cf7988856b19b1e15d29764fa6ccd8431c20858e8bc3812ed5bd26a"),
    "bias": OfficialFile("KNOWN_Bias.h5", "1fcdc8b3167e724dc7fc4f6d439ffa9d626cbd73c6d46711cb7fc721514f1cb5"),
}

# sha256 -> file name of every weight file we know, to tell a user which file they actually have.
# Other importers (WNN) add their files with `record_sha256`.
RECORDED_SHA256: dict[str, str] = {f.sha256: f.filename for f in OFFICIAL_KNOWN.values()}
RECORDED_SIZE: dict[str, int] = {f.sha256: f.size for f in OFFICIAL_KNOWN.values()}


def record_sha256(filename: str, sha256: str, size: int | None = None) -> None:
    """Make `find_weights` able to name this file when a user has it under another name."""
    RECORDED_SHA256[sha256] = filename
    if size is not None:
        RECORDED_SIZE[sha256] = size


def cache_dir(sub: str = "official") -> Path:
    """User cache for downloaded weights: $XDG_CACHE_HOME/know/<sub> (default ~/.cache/know/<sub>)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "know" / sub


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_weights(filename: str, sha256: str, env_var: str, url_base: str | None,
                 weights_dir: str | os.PathLike | None = None, cache: Path | None = None) -> Path:
    """Return a verified local copy of `filename`.

    Looks in `weights_dir`, then `$env_var`, then `cache` (default `~/.cache/know/official`); the first copy found
    is used and must match `sha256`. With no copy, downloads `url_base/filename` into `cache` (atomically, then
    checked) unless `url_base` is None or $KNOW_OFFLINE is set. Raises WeightsError with the fix otherwise.
    """
    cache = cache_dir() if cache is None else Path(cache)
    dirs = [Path(d).expanduser() for d in (weights_dir, os.environ.get(env_var)) if d] + [cache]
    for d in dirs:
        if (d / filename).is_file():
            _verify(d / filename, sha256, env_var)
            return d / filename
    searched = ", ".join(str(d) for d in dirs)
    hint = f"put {filename} in one of them (or set ${env_var} to its folder)"
    if url_base is None or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsError(f"{filename} not found (searched {searched}); {hint}")
    url = f"{url_base}/{filename}"
    try:
        return _download(url, cache / filename, sha256, env_var)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"{filename} not found (searched {searched}) and download from {url} failed "
                           f"({reason}); {hint}") from None


def _verify(path: Path, sha256: str, env_var: str) -> None:
    found = sha256_of(path)
    if found == sha256:
        return
    other = RECORDED_SHA256.get(found)
    expected = RECORDED_SHA256.get(sha256, path.name)
    if other is not None and other != expected:
        what = f"this is {other}, not {expected} (swapped files?)"
    else:
        size = path.stat().st_size
        want = f" of {RECORDED_SIZE[sha256]}" if sha256 in RECORDED_SIZE else ""
        what = f"sha256 {found[:12]}… != expected {sha256[:12]}…, {size}{want} bytes (truncated or corrupted?)"
    raise WeightsError(f"{path}: {what}; replace it with the official {expected} "
                       f"(delete it to re-download, or point ${env_var} at a folder with the right file)")


def _download(url: str, dest: Path, sha256: str, env_var: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
        _verify(Path(tmp), sha256, env_var)  # never publish a bad download
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# ----------------------------------------------------------------------------------------------------------------
# Keras Dense -> nn.Linear

# KNOWN submodule -> Keras Dense layer name (README table; looked up by name, never by position)
KNOWN_KERAS_NAMES: dict[str, str] = {
    "branch_x.lift": "dense", "branch_x.compress": "dense_1", "branch_x.additive": "dense_2",
    "branch_x.gain": "dense_3", "branch_x.rate": "dense_4", "branch_x.project": "dense_5",
    "branch_dx.lift": "dense_6", "branch_dx.compress": "dense_7", "branch_dx.additive": "dense_8",
    "branch_dx.gain": "dense_9", "branch_dx.rate": "dense_10", "branch_dx.project": "dense_11",
    "head": "dense_12",
}
KERAS_KERNEL = "{name}/{name}/kernel:0"  # legacy `save_weights` layout
KERAS_BIAS = "{name}/{name}/bias:0"


def load_keras_dense(model: nn.Module, path: Path, names: Mapping[str, str],
                     kernel: str = KERAS_KERNEL, bias: str = KERAS_BIAS) -> nn.Module:
    """Copy Keras Dense layers from an h5 weights file into the nn.Linear submodules named in `names`.

    `names` maps submodule path -> Keras layer name and must cover every Linear of `model`. A Keras kernel is
    (in, out); nn.Linear stores (out, in), hence the transpose. Any missing or misshaped dataset: WeightsError.
    """
    import h5py

    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if linears != set(names):
        raise ValueError(f"name mapping does not cover the model: missing {sorted(linears - set(names))}, "
                         f"extra {sorted(set(names) - linears)}")
    try:
        with h5py.File(path, "r") as f:
            for sub, name in names.items():
                _copy_dense(model.get_submodule(sub), f, kernel.format(name=name), bias.format(name=name), path)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable Keras weights file ({e}); replace it with the official file") \
            from None
    return model


def _copy_dense(lin: nn.Linear, f, kpath: str, bpath: str, path: Path) -> None:
    if kpath not in f or bpath not in f:
        raise WeightsError(f"{path}: dataset {kpath if kpath not in f else bpath} is missing; "
                           f"this is not the expected Keras weights file")
    k, b = f[kpath][()], f[bpath][()]
    if k.shape != (lin.in_features, lin.out_features) or b.shape != (lin.out_features,):
        raise WeightsError(f"{path}: {kpath} has shape {k.shape}, bias {b.shape}; expected "
                           f"({lin.in_features}, {lin.out_features}) and ({lin.out_features},)")
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(k).T)
        lin.bias.copy_(torch.from_numpy(b))


def load_official(kind: str, weights_dir: str | os.PathLike | None = None) -> KNOWN:
    """The authors' pretrained KNOWN for `kind` in {"conv", "fc", "bias"} (window 5), in eval mode.

    File lookup: `weights_dir`, then $KNOW_WEIGHTS_DIR, then ~/.cache/know/official (downloaded there from
    GitHub jjh6297/KNOW when missing and online). The sha256 is always checked.
    """
    if kind not in OFFICIAL_KNOWN:
        raise UnknownName(f"unknown KNOWN kind '{kind}'; choices: {', '.join(OFFICIAL_KNOWN)}")
    spec = OFFICIAL_KNOWN[kind]
    path = find_weights(spec.filename, spec.sha256, KNOWN_ENV, KNOWN_URL_BASE, weights_dir)
    model = load_keras_dense(KNOWN(window=5), path, KNOWN_KERAS_NAMES)
    model.meta = {"kind": kind, "source": "official", "file": spec.filename, "sha256": spec.sha256}
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------
# Our own weights: safetensors + JSON metadata

FORMAT = "know.known/1"


def save_known(models: KNOWN | Mapping[str, KNOWN], path: str | os.PathLike, meta: Mapping | None = None) -> Path:
    """Save one KNOWN or a {kind: KNOWN} dict as safetensors, atomically.

    `meta` (JSON-serialisable: kind, training data, code version, metrics, ...) is stored in the header; a single
    model is stored under its `meta["kind"]` (or "model") and loads back as a single model.
    """
    from safetensors.torch import save_file

    single = isinstance(models, KNOWN)
    meta = dict(meta or {})
    group = {meta.get("kind", "model"): models} if single else dict(models)
    tensors = {f"{k}.{n}": p.detach().to("cpu", torch.float32).contiguous()
               for k, m in group.items() for n, p in m.state_dict().items()}
    header = {"format": FORMAT, "single": "1" if single else "0",
              "arch": json.dumps({k: m.arch for k, m in group.items()}), "meta": json.dumps(meta, default=str)}

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_known(path: str | os.PathLike) -> KNOWN | dict[str, KNOWN]:
    """Load what `save_known` wrote; each model's `.meta` holds the saved metadata. Bad file: WeightsError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such KNOWN weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if header.get("format") != FORMAT:
            raise ValueError(f"format is {header.get('format')!r}, expected {FORMAT!r}")
        arch, meta = json.loads(header["arch"]), json.loads(header["meta"])
        models = {k: _build(k, a, tensors, meta) for k, a in arch.items()}
    except WeightsError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt headers
        raise WeightsError(f"{path}: not a readable KNOWN safetensors file ({type(e).__name__}: {e}); "
                           f"re-create it (e.g. rerun 'know meta-train')") from None
    return next(iter(models.values())) if header.get("single") == "1" else models


def _build(kind: str, arch: dict, tensors: dict, meta: dict) -> KNOWN:
    model = KNOWN(**arch)
    prefix = f"{kind}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(state)  # strict: a missing tensor is an error
    model.meta = {**meta, "kind": kind}
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# WNN (Jang et al., ICML 2023): the same network, meta-trained on ordinary training trajectories

# Pinned to the commit the reference outputs were made from (docs/known_spec.md §8); the files
# moved from the root to CNN/ (and copies) after the first upload, so a branch URL could go stale.
WNN_URL_BASE = "https://raw.githubusercontent.com/jjh6297/WNN/ab0f62cd543d0ff1b1bf1e88ce85fe705d0ed3de/CNN"
WNN_ENV = "KNOW_WNN_WEIGHTS_DIR"

# kind -> the authors' file (Keras 2.2.4, 93,512 bytes each)
OFFICIAL_WNN: dict[str, OfficialFile] = {
    "conv": OfficialFile("NWNN_Conv_13.h5", "8abb2449cc4875f79350bedfca2512ccc962b898828acc98a4fb5f57353365e8",
                         93_512),
    "fc": OfficialFile("NWNN_FC_13.h5", "19606f21d4512f6467928aa2141c9cc055f9c1078994c30bdf199aa2349311b5",
                       93_512),
    "bias": OfficialFile("NWNN_Bias_13.h5", "f1acc885a62ea91c72a1ce1b7a2f4eafbf9afc7f5c98f1adccab65510b466236",
                         93_512),
}
# The three files were saved from one Keras session, so their Dense layers are named dense_{k + offset}, where
# k is KNOWN's index (dense = 0, dense_1 = 1, ...). Ascending suffixes = Keras's positional load (README).
WNN_DENSE_OFFSET: dict[str, int] = {"conv": 14, "fc": 27, "bias": 40}
for _spec in OFFICIAL_WNN.values():  # lets find_weights name a swapped KNOWN / WNN file
    record_sha256(_spec.filename, _spec.sha256, _spec.size)


def wnn_keras_names(kind: str) -> dict[str, str]:
    """KNOWN submodule -> Dense layer name in the WNN file of `kind` (KNOWN's name shifted by the file's offset)."""
    off = WNN_DENSE_OFFSET[kind]
    index = lambda name: int(name.rpartition("_")[2]) if "_" in name else 0  # noqa: E731  "dense" = 0
    return {sub: f"dense_{index(name) + off}" for sub, name in KNOWN_KERAS_NAMES.items()}


def load_wnn(kind: str, weights_dir: str | os.PathLike | None = None) -> KNOWN:
    """The authors' WNN hyper-model for `kind` in {"conv", "fc", "bias"} as a KNOWN (window 5), in eval mode.

    File lookup: `weights_dir`, then $KNOW_WNN_WEIGHTS_DIR, then ~/.cache/know/wnn (downloaded there from GitHub
    jjh6297/WNN when missing and online). The sha256 is always checked. The model maps normalised histories to
    normalised steps: apply it with `know.wnn.WNNPredictor`, not with KNOWN's raw rule.
    """
    if kind not in OFFICIAL_WNN:
        raise UnknownName(f"unknown WNN kind '{kind}'; choices: {', '.join(OFFICIAL_WNN)}")
    spec = OFFICIAL_WNN[kind]
    path = find_weights(spec.filename, spec.sha256, WNN_ENV, WNN_URL_BASE, weights_dir, cache=cache_dir("wnn"))
    model = load_keras_dense(KNOWN(window=5), path, wnn_keras_names(kind))
    model.meta = {"kind": kind, "source": "wnn", "file": spec.filename, "sha256": spec.sha256}
    return model.eval().requires_grad_(False)
