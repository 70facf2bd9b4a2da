"""Forgetting trajectories: S checkpoints of one model, stacked per parameter.

A trajectory holds the sessions of one forgetting run, **oldest / most-forgotten first and Θ0 (full data) last**,
the same order the official KNOW code feeds its hyper-model (window[..., 0] oldest, window[..., -1] = Θ0).
``theta(k)`` counts the other way, like the paper: ``theta(0)`` = Θ0, ``theta(1)`` = Θ1 (half the data for r=0.5), ...

On-disk format (one ``.safetensors`` file, version 1)
-----------------------------------------------------
- tensor ``param/<name>``: float32, shape (S, *param_shape), session axis first, oldest first, Θ0 last.
- tensor ``buffer/<name>``: Θ0's buffer (BatchNorm running stats, ``num_batches_tracked`` ...), original dtype.
- safetensors metadata (all values are strings):
    ``format`` = "know.trajectory", ``version`` = "1", ``num_sessions`` = S,
    ``names`` = JSON list of parameter names in state_dict order,
    ``buffer_names`` = JSON list of buffer names in state_dict order,
    ``kinds`` = JSON {name: "conv" | "fc" | "bias" | "norm" | "other"},
    ``shapes`` = JSON {name: [param_shape...]} (without the session axis),
    ``meta`` = JSON dict (architecture, model_kwargs, dataset, rate, session_sizes, lr, batch_size,
    epochs_per_session, seed, code_version, ...).
Files are written to a temporary name and renamed, so a crash never leaves a half-written trajectory.

Official meta-dataset layout (HDF5 / MATLAB v7.3 ``.mat``)
---------------------------------------------------------
``ConvWeights`` (3, 3, N, S): every 3x3 kernel, channels concatenated; ``FCWeights`` (M, S): every other weight,
flattened; ``Bias`` (K, S). Shapes are in MATLAB (column-major) order with the session axis last, index 0 = smallest
dataset, index S-1 = 100% data. h5py sees MATLAB files with the axes reversed, e.g. (S, N, 3, 3); both orders are read.
The files carry no layer names, so an imported trajectory has three flat parameters ``conv`` (S, 3, 3, N),
``fc`` (S, M) and ``bias`` (S, K) with kinds conv / fc / bias. Hyper-parameters come from the file name.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from know import __version__
from know.errors import TrajectoryError
from know.io import atomic_write

FORMAT = "know.trajectory"
FORMAT_VERSION = "1"
KINDS = ("conv", "fc", "bias", "norm", "other")
OFFICIAL_SESSIONS = 7  # sessions per run in the official meta-dataset
_OFFICIAL_KEYS = {"conv": "ConvWeights", "fc": "FCWeights", "bias": "Bias"}
_DATASETS = ("CIFAR100", "CIFAR10", "FashionMNIST", "Fashion_MNIST", "FMNIST", "MNIST", "SVHN", "ImageNet")


# ----------------------------------------------------------------------------------------------- parameter kinds
def _module_kind(module: nn.Module, pname: str) -> str:
    """Kind of parameter `pname` owned directly by `module`."""
    from torch.nn.modules.batchnorm import _NormBase
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv" if pname == "weight" else "bias"
    if isinstance(module, nn.Linear):
        return "fc" if pname == "weight" else "bias"
    if isinstance(module, nn.MultiheadAttention):  # packed q/k/v projection is a Linear in disguise
        return {"in_proj_weight": "fc", "in_proj_bias": "bias"}.get(pname, "fc")
    norm_types = (_NormBase, nn.LayerNorm, nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
    # timm's own norms (RmsNorm, LayerNorm2d, FrozenBatchNorm...) do not always subclass torch's: go by name too
    if isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
        return "norm"
    return "other"


def param_kinds(model: nn.Module) -> dict[str, str]:
    """name -> kind for every parameter (state_dict names, shared parameters under every name).

    Conv*d weights are "conv" whatever the kernel size, Linear weights "fc", biases of Conv/Linear "bias",
    affine parameters of BatchNorm/LayerNorm/GroupNorm/RMSNorm "norm", anything else (pos_embed, cls_token,
    layer-scale gamma ...) "other".
    """
    kinds = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, _ in module.named_parameters(recurse=False, remove_duplicate=False):
            kinds[f"{mname}.{pname}" if mname else pname] = _module_kind(module, pname)
    return kinds


def guess_kind(name: str, shape: tuple[int, ...]) -> str:
    """Kind from name and shape alone, for state_dicts without a model (our guess, documented)."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 3:
        return "conv"
    if len(shape) == 2:
        return "fc"
    if "norm" in name.lower() or re.search(r"(^|\.)(bn|ln|gn)\d*\.", name):
        return "norm"
    return "bias" if leaf == "bias" else "other"


# ----------------------------------------------------------------------------------------------- the trajectory
@dataclass
class Trajectory:
    """S checkpoints of one model. params[name]: (S, *shape) float32, oldest first, Θ0 last."""

    params: dict[str, Tensor]
    kinds: dict[str, str]
    buffers: dict[str, Tensor] = field(default_factory=dict)  # Θ0's buffers
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- construction
    @classmethod
    def from_sessions(cls, states: list[dict[str, Tensor]], model: nn.Module | None = None,
                      meta: dict | None = None, kinds: dict[str, str] | None = None) -> "Trajectory":
        """Stack state_dicts into a trajectory.

        states[k] = Θk: states[0] is the full-data model Θ0, states[1] its fine-tune on the first subset, ...
        (the order a forgetting run produces them). They are stored reversed (oldest first, Θ0 last).
        Parameters are the model's parameters (or, without a model, floating tensors whose names do not look
        like buffers); every other state_dict entry is a buffer taken from Θ0.
        """
        if len(states) < 2:
            raise TrajectoryError(f"a trajectory needs at least 2 sessions, got {len(states)}")
        _check_same_keys(states)
        names = _param_names(states[0], model)
        if kinds is None:
            known = param_kinds(model) if model is not None else {}
            kinds = {n: known.get(n) or guess_kind(n, tuple(states[0][n].shape)) for n in names}
        params = {n: torch.stack([_as_f32(s[n], n, i) for i, s in reversed(list(enumerate(states)))]) for n in names}
        buffers = {k: v.detach().cpu().clone() for k, v in states[0].items() if k not in params}
        meta = dict(meta or {})
        meta.setdefault("code_version", _code_version())
        if model is not None:
            meta.setdefault("architecture", type(model).__name__)
        return cls(params=params, kinds=kinds, buffers=buffers, meta=meta)

    # -- access
    @property
    def num_sessions(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def num_params(self) -> int:
        """Scalars per checkpoint (parameters only)."""
        return sum(p[0].numel() for p in self.params.values())

    def theta(self, k: int = 0) -> dict[str, Tensor]:
        """State_dict of Θk (k=0 newest / full data) with Θ0's buffers. Tensors are views: clone before editing."""
        s = self.num_sessions
        if not 0 <= k < s:
            raise TrajectoryError(f"session {k} out of range: this trajectory has Θ0..Θ{s - 1}")
        sd = {n: p[s - 1 - k] for n, p in self.params.items()}
        sd.update(self.buffers)
        return sd

    def tail(self, n: int) -> "Trajectory":
        """The newest n sessions (Θ(n-1) .. Θ0), e.g. a KNOWN window of 5 from a 7-session official run."""
        if not 1 <= n <= self.num_sessions:
            raise TrajectoryError(f"cannot take the last {n} of {self.num_sessions} sessions")
        return Trajectory({k: v[-n:] for k, v in self.params.items()}, dict(self.kinds), dict(self.buffers),
                          dict(self.meta))

    # -- checks
    def validate(self) -> None:
        """Raise TrajectoryError on an empty trajectory, ragged sessions, unknown kinds or NaN/Inf values."""
        if not self.params:
            raise TrajectoryError("trajectory has no parameters")
        s = next(iter(self.params.values())).shape[0] if next(iter(self.params.values())).dim() else 0
        for name, p in self.params.items():
            if p.dim() == 0 or p.shape[0] != s:
                raise TrajectoryError(f"parameter '{name}' has {p.shape[0] if p.dim() else 0} sessions, "
                                      f"expected {s} (sessions must share names and shapes)")
            _check_finite(p, name)
        if set(self.kinds) != set(self.params):
            missing = sorted(set(self.params) ^ set(self.kinds))[:3]
            raise TrajectoryError(f"kinds and params name different tensors, e.g. {missing}")
        bad = {k: v for k, v in self.kinds.items() if v not in KINDS}
        if bad:
            raise TrajectoryError(f"unknown parameter kinds {bad}; known: {', '.join(KINDS)}")

    # -- disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file atomically (temp file + rename); returns the path."""
        from safetensors.torch import save_file
        tensors = {f"param/{n}": p.contiguous() for n, p in self.params.items()}
        tensors.update({f"buffer/{n}": b.contiguous().clone() for n, b in self.buffers.items()})
        md = {"format": FORMAT, "version": FORMAT_VERSION, "num_sessions": str(self.num_sessions),
              "names": json.dumps(list(self.params)), "buffer_names": json.dumps(list(self.buffers)),
              "kinds": json.dumps(self.kinds),
              "shapes": json.dumps({n: list(p.shape[1:]) for n, p in self.params.items()}),
              "meta": json.dumps(self.meta, default=str)}
        path = Path(path)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=md))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        """Read a file written by :meth:`save`; a truncated or foreign file raises TrajectoryError."""
        path = Path(path)
        if not path.is_file():
            raise TrajectoryError(f"trajectory file not found: {path}")
        tensors, md = _read_safetensors(path)
        if md.get("format") != FORMAT:
            raise TrajectoryError(f"{path} is a safetensors file but not a know trajectory (no format={FORMAT})")
        try:
            names, bnames = json.loads(md["names"]), json.loads(md["buffer_names"])
            kinds, shapes, meta = json.loads(md["kinds"]), json.loads(md["shapes"]), json.loads(md["meta"])
            params = {n: tensors[f"param/{n}"] for n in names}
            buffers = {n: tensors[f"buffer/{n}"] for n in bnames}
        except (KeyError, ValueError) as e:
            raise TrajectoryError(f"{path}: corrupt trajectory metadata ({type(e).__name__}: {e})") from None
        for n, p in params.items():
            if list(p.shape[1:]) != shapes.get(n) or p.shape[0] != int(md["num_sessions"]):
                raise TrajectoryError(f"{path}: parameter '{n}' has shape {tuple(p.shape)}, metadata says "
                                      f"({md['num_sessions']}, {', '.join(map(str, shapes.get(n, [])))})")
        try:
            return cls(params=params, kinds=kinds, buffers=buffers, meta=meta)
        except TrajectoryError as e:  # NaN/Inf, ragged sessions: name the file and the fix
            raise TrajectoryError(f"{path}: {e}; re-create the trajectory (know forget)") from None


# ----------------------------------------------------------------------------------------------- helpers
def _code_version() -> str:
    return __version__


def _check_same_keys(states: list[dict[str, Tensor]]) -> None:
    ref = states[0]
    for i, s in enumerate(states[1:], start=1):
        if set(s) != set(ref):
            diff = sorted(set(s) ^ set(ref))[:3]
            raise TrajectoryError(f"session Θ{i} has different tensor names from Θ0, e.g. {diff}")
        for k, v in s.items():
            if tuple(v.shape) != tuple(ref[k].shape):
                raise TrajectoryError(f"'{k}' has shape {tuple(v.shape)} in Θ{i} but {tuple(ref[k].shape)} in Θ0")


def _param_names(state: dict[str, Tensor], model: nn.Module | None) -> list[str]:
    if model is not None:
        pnames = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        missing = sorted(pnames - set(state))[:3]
        if missing:
            raise TrajectoryError(f"state_dicts lack parameters of the model, e.g. {missing}")
        return [k for k in state if k in pnames]
    # without a model: floating tensors that are not the usual BatchNorm buffers
    buffer_leaves = ("running_mean", "running_var", "num_batches_tracked")
    return [k for k, v in state.items() if v.is_floating_point() and not k.endswith(buffer_leaves)]


def _as_f32(t: Tensor, name: str, session: int) -> Tensor:
    t = t.detach().to("cpu", torch.float32)
    _check_finite(t, name, f"Θ{session}")
    return t


def _check_finite(t: Tensor, name: str, where: str | None = None) -> None:
    if torch.isfinite(t).all():
        return
    if where is None:  # stacked (S, ...): name the session, oldest first -> Θ(S-1-i)
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().flatten().tolist()
        where = ", ".join(f"Θ{t.shape[0] - 1 - i} (index {i})" for i in bad[:3])
    raise TrajectoryError(f"parameter '{name}' has NaN/Inf values in session {where}")


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers / data
        raise TrajectoryError(f"{path} is truncated or not a safetensors file ({type(e).__name__}: {e})") from None
    return tensors, md


# ----------------------------------------------------------------------------------------------- official .mat
def parse_official_name(name: str) -> dict:
    """Hyper-parameters from an official file name, e.g.
    ``ViT_Small_CIFAR10_..._SamplingRate_0.344_LR_0.000898_BS_33.mat`` ->
    {architecture: "ViT_Small", dataset: "CIFAR10", rate: 0.344, lr: 0.000898, batch_size: 33}.
    Fields that are not in the name are left out.
    """
    stem = Path(name).name
    stem = stem[:-4] if stem.lower().endswith(".mat") else stem
    num = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
    meta: dict = {"source_file": Path(name).name}
    for key, tag, cast in (("rate", "SamplingRate", float), ("lr", "LR", float), ("batch_size", "BS", float)):
        m = re.search(rf"(?:^|_){tag}_{num}", stem)
        if m:
            meta[key] = cast(m.group(1))
    if "batch_size" in meta:
        meta["batch_size"] = int(meta["batch_size"])
    tokens = stem.split("_")
    upper = [t.upper() for t in tokens]
    for ds in _DATASETS:
        if ds.split("_")[0].upper() in upper:
            i = upper.index(ds.split("_")[0].upper())
            meta["dataset"] = ds if "_" not in ds else "FashionMNIST"
            if i > 0:
                meta["architecture"] = "_".join(tokens[:i])
            break
    return meta


def _session_axis(shape: tuple[int, ...], s: int, kernel: bool) -> int:
    """Which end of `shape` is the session axis (0 = h5py sees MATLAB reversed, -1 = MATLAB order)."""
    if kernel:  # (S, N, 3, 3) reversed vs (3, 3, N, S) direct: the 3x3 axes decide
        if shape[0] == s and shape[-2:] == (3, 3):
            return 0
        if shape[-1] == s and shape[:2] == (3, 3):
            return -1
    elif shape[0] == s:  # MATLAB v7.3 seen by h5py puts the session axis first; prefer it when both fit
        return 0
    elif shape[-1] == s:
        return -1
    raise TrajectoryError(f"cannot find a session axis of length {s} in shape {shape}")


def _official_sessions(shapes: dict[str, tuple[int, ...]], num_sessions: int | None) -> int:
    if num_sessions:
        return num_sessions
    ends = [{sh[0], sh[-1]} for sh in shapes.values()]
    common = set.intersection(*ends) if ends else set()
    if OFFICIAL_SESSIONS in common or not common:
        return OFFICIAL_SESSIONS
    return max(common)


def load_official_mat(path: str | os.PathLike, num_sessions: int | None = None) -> Trajectory:
    """Import one run of the official meta-dataset (.mat v7.3 / HDF5) as a 3-parameter trajectory.

    Result: params "conv" (S, 3, 3, N), "fc" (S, M), "bias" (S, K), oldest first (= the file's session order);
    missing datasets are skipped. meta holds what the file name says (architecture, dataset, rate, lr, batch_size).
    """
    import h5py
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            raw = {k: f[v][()] for k, v in _OFFICIAL_KEYS.items() if v in f}
    except (OSError, KeyError) as e:
        raise TrajectoryError(f"{path} is not a readable HDF5/.mat v7.3 file ({e})") from None
    if not raw:
        raise TrajectoryError(f"{path} has none of {', '.join(_OFFICIAL_KEYS.values())}")
    s = _official_sessions({k: v.shape for k, v in raw.items()}, num_sessions)
    params = {k: _official_to_stack(torch.from_numpy(v).float(), s, k == "conv") for k, v in raw.items()}
    meta = parse_official_name(path.name)
    meta["official_layout"] = True
    return Trajectory(params=params, kinds={k: k for k in params}, meta=meta)


def _official_to_stack(t: Tensor, s: int, kernel: bool) -> Tensor:
    """File array -> (S, *MATLAB-order shape without the session axis)."""
    if _session_axis(tuple(t.shape), s, kernel) == 0:  # h5py view of a MATLAB file: (S, N, 3, 3) -> reverse the rest
        return t.permute(0, *range(t.dim() - 1, 0, -1)).contiguous()
    return t.movedim(-1, 0).contiguous()


def official_layout(traj: Trajectory) -> dict[str, Tensor]:
    """Gather a trajectory into the official arrays (session axis first): conv (S,3,3,N), fc (S,M), bias (S,K).

    A flat (imported) trajectory passes through. For a layered one: 3x3 conv kernels (Cout,Cin,3,3) become Keras
    layout (3,3,Cin,Cout) and are concatenated on the channel axis; every other weight (conv of other sizes, fc,
    "other") is flattened into FCWeights; "bias" tensors go to Bias. Norm parameters are left out ([ours]: the
    official sample networks have no normalisation layers).
    """
    if traj.meta.get("official_layout") or set(traj.params) <= set(_OFFICIAL_KEYS):
        return dict(traj.params)
    s, conv, fc, bias = traj.num_sessions, [], [], []
    for n, p in traj.params.items():
        k = traj.kinds[n]
        if k == "conv" and p.dim() == 5 and tuple(p.shape[-2:]) == (3, 3):
            conv.append(p.permute(0, 3, 4, 2, 1).reshape(s, 3, 3, -1))
        elif k in ("conv", "fc") or (k == "other" and p.dim() >= 3):
            fc.append(p.reshape(s, -1))
        elif k == "bias":
            bias.append(p.reshape(s, -1))
    return {"conv": torch.cat(conv, -1) if conv else torch.zeros(s, 3, 3, 0),
            "fc": torch.cat(fc, -1) if fc else torch.zeros(s, 0),
            "bias": torch.cat(bias, -1) if bias else torch.zeros(s, 0)}


def save_official_mat(traj: Trajectory, path: str | os.PathLike, matlab_order: bool = True) -> Path:
    """Write the official layout as a MATLAB v7.3 .mat (HDF5 with a MATLAB userblock), atomically.

    With matlab_order (default) datasets are stored reversed, as MATLAB writes them, so h5py sees (S, N, 3, 3) and
    MATLAB sees (3, 3, N, S). matlab_order=False stores (3, 3, N, S) as h5py shapes (what some converters do).
    """
    import h5py
    import numpy as np
    arrays = official_layout(traj)

    def write(tmp):
        with h5py.File(tmp, "w", userblock_size=512) as f:
            for k, t in arrays.items():
                a = t.numpy()  # (S, ...MATLAB order)
                a = a.transpose(0, *range(a.ndim - 1, 0, -1)) if matlab_order else np.moveaxis(a, 0, -1)
                d = f.create_dataset(_OFFICIAL_KEYS[k], data=np.ascontiguousarray(a, dtype=np.float32))
                d.attrs["MATLAB_class"] = np.bytes_("single")
        _write_mat_header(tmp)

    path = Path(path)
    atomic_write(path, write)
    return path


def _write_mat_header(path: str) -> None:
    """MATLAB recognises a v7.3 file by a 128-byte text header in the HDF5 userblock."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: know. HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)
