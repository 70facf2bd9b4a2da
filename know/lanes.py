"""The "lanes" stack backend: K <= 16 SimpleNets trained at once with member k in SIMD lane k (CPU only).

Every tensor keeps the member axis innermost, (..., 16), so one 16-float vector holds one value of all members and
the convolutions become plain element-wise vector arithmetic (know/kernels/lanes.c). oneDNN's grouped convolutions are
slow at SimpleNet's channel counts (8-32 per member); these kernels are not (benchmarks/collect_speed.py).

know/kernels/lanes.c is compiled on first use with the system C compiler (`$CC`, else cc/gcc/clang; -O3
-march=native), once per machine, see `know.kernels`; the ctypes mirrors of its structs are checked by size at load. Without a compiler, or with $KNOW_CKERNEL=0, `library()` is None and stacks use the
"wide" backend.
"""
from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
from torch import Tensor, nn

from know import kernels
from know.models.simplenet import SimpleNet

FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-lm"]
TRAIN_CHUNK = 4  # images per forward + backward pass (one thread's share of work at a time) ...
MAX_CHUNKS = 16  # ... but at most this many chunks per batch: each has its own gradient slot
IMAGES_INNER_MAX = 16  # as in lanes.c
EVAL_CHUNK = 16  # images per forward pass in logits()
MAX_CONVS = 8  # as in lanes.c
_I, _P = ctypes.c_int, ctypes.c_void_p


class _Plan(ctypes.Structure):
    """`struct plan` of lanes.c: the shapes and buffer addresses of one chunk's forward and backward."""
    _fields_ = ([(n, _I) for n in ("n_conv", "b", "k", "total", "hidden", "classes", "features", "start")]
                + [(n, _I * MAX_CONVS) for n in ("ci", "co", "h", "w", "ks")]
                + [(n, _P * MAX_CONVS) for n in ("wt", "bias", "wflip")] + [("x", _P * (MAX_CONVS + 1))]
                + [(n, _P * MAX_CONVS) for n in ("z", "codes", "dz", "da", "dw", "db")]
                + [(n, _P) for n in ("fc_w", "fc_b", "fc_wt", "head_w", "head_b", "head_wt", "fc_out", "act",
                                     "logits", "dlogits", "dact", "dfeats")])


class _Step(ctypes.Structure):
    """`struct step` of lanes.c: what the threads of one training step share."""
    _fields_ = ([(n, _I) for n in ("n_chunks", "parts", "total")] + [("counters", _P), ("src", _P)]
                + [(n, ctypes.c_long) for n in ("member_stride", "image_stride")] + [("labels", _P)]
                + [("label_stride", ctypes.c_long), ("losses", _P), ("grads", _P), ("slots", _P)]
                + [(n, ctypes.c_long) for n in ("slot_stride", "conv_vectors")]
                + [(n, _P * 2) for n in ("dense_in", "dense_dout", "dense_dw", "dense_db")]
                + [(n, _I * 2) for n in ("dense_ci", "dense_co")]
                + [(n, _P) for n in ("params", "exp_avg", "exp_avg_sq", "lr")] + [("n_params", ctypes.c_long)]
                + [(n, ctypes.c_float) for n in ("w1", "b2", "w2", "eps", "bc1", "bc2_sqrt")])


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled lane kernels, or None (with a warning when a compiler is missing or the build fails)."""
    fallback = "stacked training uses the slower 'wide' backend"
    lib = kernels.load("lanes", FLAGS, fallback)
    if lib is None or not all(kernels.check_struct(lib, f"sizeof_{name}", struct, fallback)
                              for name, struct in (("plan", _Plan), ("step", _Step))):
        return None
    lib.plan_forward.argtypes = [ctypes.POINTER(_Plan), ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    lib.train_step.argtypes = [ctypes.POINTER(_Step), ctypes.c_void_p]
    lib.adam_step.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_void_p] + [ctypes.c_float] * 6
    lib.flip_transpose.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3
    for fn in (lib.plan_forward, lib.train_step, lib.adam_step, lib.flip_transpose):
        fn.restype = None
    return lib


def _ptr(t: Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu", "lane kernels need CPU float32"
    return t.data_ptr()


def _layers(template: nn.Module) -> tuple[list[nn.Conv2d], nn.Linear, nn.Linear] | None:
    """SimpleNet's shape: features = [Conv2d('same', stride 1), ReLU, MaxPool2d(2)] * n, then fc, ReLU, head."""
    if type(template) is not SimpleNet:
        return None
    mods = list(template.features)
    convs = mods[0::3]
    for conv, relu, pool in zip(mods[0::3], mods[1::3], mods[2::3]):
        ks = conv.kernel_size[0]
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (ks, ks) and ks % 2 == 1 and ks <= 5
                and conv.stride == (1, 1) and conv.padding == (ks // 2, ks // 2) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(relu, nn.ReLU)
                and isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (2, (2, 2))
                and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1))
                and not pool.ceil_mode):
            return None
    ok = len(mods) % 3 == 0 and 0 < len(convs) <= MAX_CONVS
    return (convs, template.fc, template.head) if ok else None


def _share(n: int, t: int, parts: int) -> tuple[int, int]:
    """(start, count) of share t of range(n) cut into `parts` contiguous pieces."""
    start = n * t // parts
    return start, n * (t + 1) // parts - start


class _Workspace:
    """One thread's activations: persistent, zero-initialised buffers whose padded borders stay zero (kernels write
    interiors only), so a step allocates nothing; and the plans that point into them, one per chunk shape."""

    def __init__(self, lanes: int):
        self.lanes, self.buffers, self.plans = lanes, {}, {}

    def buf(self, key: str, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        full = (key, *shape)
        if full not in self.buffers:
            self.buffers[full] = torch.zeros(*shape, self.lanes, dtype=dtype)
        return self.buffers[full]


class LaneNet:
    """K <= 16 SimpleNets in lane layout. `params` {name: (K, *shape)} are views of the lane storage: update them in
    place. `loss_and_grads` returns gradients that are views of buffers the next call overwrites.

    A step cuts the batch into chunks of TRAIN_CHUNK images (more for large batches) that `threads` threads take in
    turn as they finish, each with its own workspace, in one C call per thread (`train_step`, which releases the
    GIL and takes chunks from a shared counter), so a slower core simply takes fewer. Each chunk writes its own
    gradient slot and the slots are summed in chunk order: the result does not depend on which thread took which
    chunk."""

    def __init__(self, template: nn.Module, k: int, lib: ctypes.CDLL, betas: tuple[float, float], eps: float,
                 threads: int | None = None):
        convs, fc, head = _layers(template)
        self.lib, self.k, self.lanes = lib, k, lib.lanes()
        self.betas, self.eps = betas, eps  # Adam's, passed in by the caller (know.stack)
        if k > self.lanes:
            raise ValueError(f"at most {self.lanes} members per lane stack, got {k}")
        module_name = {id(m): n for n, m in template.named_modules()}
        self.convs = [module_name[id(c)] for c in convs]
        self.fc, self.head = module_name[id(fc)], module_name[id(head)]
        self.ks = [c.kernel_size[0] for c in convs]
        # every parameter, gradient slot and moment is a view of one flat (P, 16) tensor: one call updates them all
        self.shapes = {n: p.shape for n, p in template.named_parameters()}
        size = sum(s.numel() for s in self.shapes.values())
        self.flat = torch.zeros(size, self.lanes)
        self.store = self._views(self.flat)
        self.params = {n: s[..., :k].movedim(-1, 0) for n, s in self.store.items()}
        # the input-gradient weights: convolutions flipped and transposed, Linear layers transposed
        self.flipped = {n: torch.zeros_like(self._weight(n).transpose(0, 1)).contiguous()
                        for n in (*self.convs[1:], self.fc, self.head)}
        self.threads = threads or torch.get_num_threads()
        self.workspaces = [_Workspace(self.lanes) for _ in range(self.threads)]
        self.slot_flat = torch.zeros(MAX_CHUNKS, size, self.lanes)  # per-chunk weight gradients
        self.slots = [self._views(flat) for flat in self.slot_flat]
        self.grad_flat = torch.zeros_like(self.flat)  # their sum
        self.grad_views = self._views(self.grad_flat)
        self.grads = {n: s[..., :k].movedim(-1, 0) for n, s in self.grad_views.items()}
        # fc and head come last: their gradients are taken once per step from whole-batch buffers, not per chunk
        names = list(self.shapes)
        dense = [f"{m}.{p}" for m in (self.fc, self.head) for p in ("weight", "bias")]
        assert names[-4:] == dense, f"SimpleNet's parameters end with fc and head, got {names[-4:]}"
        self.conv_vectors = sum(self.shapes[n].numel() for n in names[:-4])  # the part each chunk's slot holds
        self.batch_buffers: dict[int, dict[str, Tensor]] = {}
        self.steps: dict[tuple, tuple[_Step, list[ctypes.Array]]] = {}
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    @classmethod
    def build(cls, template: nn.Module, k: int, betas: tuple[float, float], eps: float) -> LaneNet | None:
        """A LaneNet for `template` whose Adam uses `betas` and `eps`, or None when the kernels are missing or the
        model has another shape."""
        lib = library()
        if lib is None or _layers(template) is None or k > lib.lanes():
            return None
        return cls(template, k, lib, betas, eps)

    def _weight(self, name: str) -> Tensor:
        return self.store[name + ".weight"]

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        """{name: (*shape, 16)} views of a flat (P, 16) tensor, in parameter order."""
        views, start = {}, 0
        for n, shape in self.shapes.items():
            views[n] = flat[start:start + shape.numel()].view(*shape, self.lanes)
            start += shape.numel()
        return views

    def optimizer(self, lrs: Tensor) -> LaneAdam:
        """Adam for the members, one learning rate each (`know.stack.StackedAdam`'s arithmetic)."""
        return LaneAdam(self, lrs)

    def _batch(self, total: int) -> dict[str, Tensor]:
        """The whole-batch buffers (total, width, 16) of the dense layers' inputs and output gradients, allocated
        by the calling thread before any chunk runs (plans keep their addresses)."""
        if total not in self.batch_buffers:
            (hidden, features), classes = self._weight(self.fc).shape[:2], self._weight(self.head).shape[0]
            widths = {"features": features, "act": hidden, "dact": hidden, "dlogits": classes}
            self.batch_buffers[total] = {name: torch.zeros(total, w, self.lanes) for name, w in widths.items()}
        return self.batch_buffers[total]

    def _plan(self, ws: _Workspace, b: int, shape: tuple[int, int, int], total: int, slot: int | None,
              start: int = 0) -> _Plan:
        """The plan of a chunk of b images of `shape` (C, H, W) in `ws`, gradients into slot `slot` (None: forward
        only), its fc input and the dense layers' activations and gradients in rows start .. start + b of the
        whole-batch buffers. Built once per key; it holds addresses of persistent tensors only."""
        key = (b, shape, total, slot, start)
        if key in ws.plans:
            return ws.plans[key]
        p = _Plan(n_conv=len(self.convs), b=b, k=self.k, total=total, start=start)
        grads = self.slots[slot] if slot is not None else None

        def grad(name: str) -> int | None:
            return _ptr(grads[name]) if grads else None

        c, h, w = shape
        for i, name in enumerate(self.convs):
            co, ci, ks = self._weight(name).shape[:3]
            pad = ks // 2
            p.ci[i], p.co[i], p.h[i], p.w[i], p.ks[i] = ci, co, h, w, ks
            p.wt[i], p.bias[i] = _ptr(self._weight(name)), _ptr(self.store[name + ".bias"])
            p.wflip[i] = _ptr(self.flipped[name]) if i > 0 else None
            if i == 0:
                p.x[0] = _ptr(ws.buf("x0", b, ci, h + 2 * pad, w + 2 * pad))
            if slot is not None:  # the pool's gradient routes, one byte per pooled value and member
                p.codes[i] = ws.buf(f"codes{i}", b, co, h // 2, w // 2, dtype=torch.uint8).data_ptr()
            p.z[i] = _ptr(ws.buf(f"z{i}", co, 2, w)) if i > 0 else None  # two conv rows (the first: registers)
            per_image = h * w > IMAGES_INNER_MAX  # as plan_train runs the backward: image by image, or all at once
            p.dz[i] = _ptr(ws.buf(f"dz{i}", 1 if per_image else b, co, h + 2 * pad, w + 2 * pad)) if i > 0 else None
            p.da[i] = _ptr(ws.buf(f"da{i}", b, ci, h, w)) if i > 0 else None
            p.dw[i], p.db[i] = grad(name + ".weight"), grad(name + ".bias")
            h, w = h // 2, w // 2
            nxt = self.ks[i + 1] // 2 if i + 1 < len(self.convs) else 0
            p.x[i + 1] = _ptr(ws.buf(f"x{i + 1}", b, co, h + 2 * nxt, w + 2 * nxt))
        p.features, p.hidden, p.classes = co * h * w, self._weight(self.fc).shape[0], self._weight(self.head).shape[0]
        p.fc_w, p.fc_b, p.fc_wt = (_ptr(t) for t in (self._weight(self.fc), self.store[self.fc + ".bias"],
                                                      self.flipped[self.fc]))
        p.head_w, p.head_b, p.head_wt = (_ptr(t) for t in (self._weight(self.head), self.store[self.head + ".bias"],
                                                            self.flipped[self.head]))
        batch_fields = ("act", "dact", "dlogits") if slot is not None else ()
        for field, width in (("fc_out", p.hidden), ("act", p.hidden), ("dact", p.hidden), ("logits", p.classes),
                             ("dlogits", p.classes), ("dfeats", p.features)):
            setattr(p, field, _ptr(self.batch_buffers[total][field][start:]) if field in batch_fields
                    else _ptr(ws.buf(field, b, width)))
        if slot is not None:
            p.x[len(self.convs)] = _ptr(self.batch_buffers[total]["features"][start:])
        ws.plans[key] = p
        return p

    def shares(self, fn) -> None:
        """fn(t, threads) for t in range(threads), at once: each thread does its share of some work."""
        if self._pool is None:
            fn(0, 1)
        else:
            list(self._pool.map(lambda t: fn(t, self.threads), range(self.threads)))

    def split(self, n: int, fn) -> None:
        """fn(start, count) over `threads` contiguous ranges of range(n) at once (element-wise work)."""
        self.shares(lambda t, parts: fn(*_share(n, t, parts)))

    def _chunked(self, n: int, size: int, fn) -> list:
        """[fn(workspace, i, chunk slice) for each chunk of range(n)], the chunks taken by the threads in turn."""
        chunks = list(enumerate(slice(a, min(a + size, n)) for a in range(0, n, size)))
        todo, lock, results = iter(chunks), threading.Lock(), [None] * len(chunks)

        def worker(ws: _Workspace) -> None:
            while True:
                with lock:
                    i, sl = next(todo, (None, None))
                if i is None:
                    return
                results[i] = fn(ws, i, sl)

        workers = min(self.threads, len(chunks))
        if workers <= 1:
            worker(self.workspaces[0])
        else:
            list(self._pool.map(worker, self.workspaces[:workers]))
        return results

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shared input -> (K, B, classes)."""
        x = x.float().contiguous()
        image = x[0].numel()

        def chunk(ws: _Workspace, i: int, sl: slice) -> Tensor:
            b = sl.stop - sl.start
            plan = self._plan(ws, b, tuple(x.shape[1:]), 0, None)
            self.lib.plan_forward(plan, x.data_ptr() + sl.start * image * 4, 0, image)
            out = ws.buf("logits", b, plan.classes)
            return out[..., :self.k].permute(2, 0, 1).clone()

        return torch.cat(self._chunked(x.shape[0], EVAL_CHUNK, chunk), 1)

    @torch.no_grad()
    def loss_and_grads(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-member inputs (K, B, C, H, W) and labels (K, B) -> mean loss (K,) and gradients {name: (K, ...)}."""
        return self._step(xs, ys, None), self.grads

    def train_step(self, xs: Tensor, ys: Tensor, adam: LaneAdam) -> Tensor:
        """`loss_and_grads` and then `adam.step()`, in one pass of the threads (Adam on the gradients while they are
        in cache). Returns the mean loss (K,)."""
        return self._step(xs, ys, adam)

    def _step(self, xs: Tensor, ys: Tensor, adam: LaneAdam | None) -> Tensor:
        xs, ys = xs.float().contiguous(), ys.long().contiguous()
        total = xs.shape[1]
        for n, out in self.flipped.items():  # convolutions flipped and transposed, Linear layers transposed
            w = self._weight(n)
            self.lib.flip_transpose(w.data_ptr(), out.data_ptr(), w.shape[0], w.shape[1],
                                    w.shape[2] if w.dim() == 5 else 1)
        step, plans = self._step_setup(total, tuple(xs.shape[2:]))
        losses, counters = torch.zeros(step.n_chunks, self.lanes), (ctypes.c_int * 5)()  # counters: all zero
        step.counters, step.losses = ctypes.addressof(counters), _ptr(losses)
        step.src, step.member_stride, step.image_stride = _ptr(xs), xs[0].numel(), xs[0, 0].numel()
        step.labels, step.label_stride = ys.data_ptr(), total
        step.lr = adam.prepare(step) if adam is not None else None
        self.shares(lambda t, parts: self.lib.train_step(ctypes.byref(step), plans[t]))
        return sum(losses[:, :self.k]) / total  # in chunk order

    def _step_setup(self, total: int, shape: tuple[int, int, int]) -> tuple[_Step, list[ctypes.Array]]:
        """The step's shared description and, per thread, the plans of its chunks in its workspace (a C array), for
        batches of `total` images of `shape`: chunks of TRAIN_CHUNK images, more when the batch has over MAX_CHUNKS
        of those. Built once per key."""
        key = (total, shape)
        if key not in self.steps:
            batch = self._batch(total)
            size = max(TRAIN_CHUNK, -(-total // MAX_CHUNKS))
            chunks = [(i, start, min(size, total - start)) for i, start in enumerate(range(0, total, size))]
            plans = [(ctypes.POINTER(_Plan) * len(chunks))(*[ctypes.pointer(self._plan(ws, b, shape, total, i, start))
                                                             for i, start, b in chunks])
                     for ws in self.workspaces]
            step = _Step(n_chunks=len(chunks), parts=self.threads, total=total, grads=_ptr(self.grad_flat),
                         slots=_ptr(self.slot_flat), slot_stride=self.flat.shape[0], conv_vectors=self.conv_vectors,
                         params=_ptr(self.flat), n_params=self.flat.shape[0])
            for d, (layer, inputs, grads) in enumerate(((self.fc, "features", "dact"), (self.head, "act", "dlogits"))):
                step.dense_co[d], step.dense_ci[d] = self._weight(layer).shape[:2]
                step.dense_in[d], step.dense_dout[d] = _ptr(batch[inputs]), _ptr(batch[grads])
                step.dense_dw[d] = _ptr(self.grad_views[layer + ".weight"])
                step.dense_db[d] = _ptr(self.grad_views[layer + ".bias"])
            self.steps[key] = step, plans
        return self.steps[key]


class LaneAdam:
    """`know.stack.StackedAdam` for a LaneNet: the same arithmetic, one C call over the flat lane storage."""

    def __init__(self, net: LaneNet, lrs: Tensor):
        self.net, self.betas, self.eps = net, net.betas, net.eps
        self.lrs = torch.zeros(net.lanes)
        self.lrs[:net.k] = lrs.float()  # padded lanes get lr 0: their (zero) weights never move
        self.exp_avg, self.exp_avg_sq, self.t = torch.zeros_like(net.flat), torch.zeros_like(net.flat), 0

    def step(self, params: dict[str, Tensor] | None = None, grads: dict[str, Tensor] | None = None) -> None:
        """One step with the net's current gradients (`params` and `grads` are accepted for StackedAdam's
        signature: they are the net's own)."""
        net, (w1, b2, w2, eps, bc1, bc2_sqrt) = self.net, self._scalars()
        net.split(net.flat.shape[0], lambda lo, n: net.lib.adam_step(
            net.flat[lo:].data_ptr(), net.grad_flat[lo:].data_ptr(), self.exp_avg[lo:].data_ptr(),
            self.exp_avg_sq[lo:].data_ptr(), n, self.lrs.data_ptr(), w1, b2, w2, eps, bc1, bc2_sqrt))

    def prepare(self, step: _Step) -> int:
        """Set up the next step's Adam part in `step` (see LaneNet.train_step); returns the learning rates' address."""
        step.exp_avg, step.exp_avg_sq = _ptr(self.exp_avg), _ptr(self.exp_avg_sq)
        step.w1, step.b2, step.w2, step.eps, step.bc1, step.bc2_sqrt = self._scalars()
        return _ptr(self.lrs)

    def _scalars(self) -> tuple[float, ...]:
        """The next step's (w1, b2, w2, eps, bc1, bc2_sqrt) of adam_step, as torch rounds them."""
        b1, b2 = self.betas
        self.t += 1
        return 1 - b1, b2, 1 - b2, self.eps, 1 - b1 ** self.t, (1 - b2 ** self.t) ** 0.5
