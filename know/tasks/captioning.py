"""Image captioning (T-E): the upstream network as a frozen image encoder under a Transformer caption decoder.

The paper gives only "PVTv2 encoder with a Transformer decoder, Flickr8K; metric masked accuracy". The recipe here is
our inference (docs/method.md §8): the authors work in Keras, and the public Keras example "Image Captioning"
(keras-io examples/vision/image_captioning.py, A_K_Nain, revision "Last modified 2021/10/31": SEQ_LENGTH 25) matches
the task and the metric, so every default below is that revision's value. What it does, and how this module follows:

  data     Flickr8K's captions; an image is dropped when any of its captions has fewer than 5 or more than 25 tokens
           (counted on the raw caption split on whitespace, so Flickr8K's final " ." counts), then a seeded 80/20 split
           by image (train / the example's "validation", which is its only held-out set: our test). Datasets with
           train/val/test splits (caption_canvases) use them as they are, filtered the same way.
  text     TextVectorization: lowercase, strip string.punctuation except "<" and ">", split on whitespace; vocabulary
           of at most 10,000 ids (0 padding "", 1 OOV "[UNK]", then tokens by count, ties by token, both descending:
           Keras' np.lexsort(...)[::-1]); every caption is "<start> caption <end>" padded/truncated to 25 ids; the
           decoder reads ids [:-1] and predicts ids [1:].
  model    frozen CNN (EfficientNetB0, ImageNet) -> its feature map reshaped to (B, tokens, C) ->
           TransformerEncoderBlock: LayerNorm, Dense(512, relu), 1-head self-attention, LayerNorm(x + attention) ->
           TransformerDecoderBlock: token embedding * sqrt(512) + learned positions, causal 2-head self-attention
           (dropout 0.1), LayerNorm(x + .), 2-head cross-attention to the encoder output (dropout 0.1),
           LayerNorm(x + .), Dense(512, relu), Dropout 0.3, Dense(512), LayerNorm(x + .), Dropout 0.5,
           Dense(vocab, softmax).
  training batch 64, at most 30 epochs, Adam with a linear warm-up to 1e-4 over 1/15 of the planned steps, then
           constant; EarlyStopping(patience 3) on the validation loss with restore_best_weights. For every batch the
           five captions of each image go through the decoder one after another, and EACH caption's masked mean
           cross-entropy gets its own Adam update (five updates per batch: one GradientTape and apply_gradients per
           caption); the logged loss is the sum of the five.
  metric   masked accuracy: correct argmax predictions among the non-padding target ids / non-padding target ids.

Deviations, each ours:
- The frozen image encoder is the upstream network (`forward_features` when it has one, else whatever enters its
  head), kept in eval mode whatever `model.train()` says (its normalisation statistics never move).
- Attention is torch.nn.MultiheadAttention: heads split the width (the decoder's 2 heads are 256 wide each) where
  Keras' MultiHeadAttention(key_dim=512) gives every head the full width (2 x 512 query/key/value projections). The
  1-head encoder attention is the same layer; the decoder's attentions have about half the example's parameters.
  Initialisation follows Keras: glorot-uniform with Keras' fan rule on the einsum kernel shapes (in, heads, head_dim)
  and (heads, head_dim, out), zero biases; Dense glorot-uniform, zero bias; Embedding uniform(-0.05, 0.05);
  LayerNormalization epsilon 1e-3.
- The example's padding masks (keys and queries at padding targets) change only outputs at padding targets, which
  neither loss nor accuracy read; the causal mask alone gives the same numbers there.
- Output logits with cross-entropy instead of softmax + Keras' clipped log (the same up to Keras' 1e-7 clip).
- The embedding and output layers have as many ids as the vocabulary holds (at most `vocab_size`), where the example
  sizes them VOCAB_SIZE whatever the text (ids that never occur are the only difference).
- The vocabulary comes from the training captions only (the example adapts it on every caption, held-out ones too).
- `caption_updates="each"` (default) is the example's five updates per batch; "mean" is one update on the mean of
  the five captions' losses. A "step" (limit_steps, the step count fit logs) is one batch either way; the train
  loss reported is the mean over the five captions (the example logs their sum).
- No image augmentation: the example's 2021/10 revision flips, rotates and changes contrast, and a flip would
  contradict the left/right captions of caption_canvases; `TransferCfg.augment` has no effect here.
- Learning rate per epoch (`finetune_lr`'s schedules). Because the example's optimizer counts five updates per batch,
  its warm-up over len(train) * 30 // 15 optimizer steps ends after 0.4 epochs; "warmup_constant" with
  warmup_epochs <= 1 (1e-4 from the first epoch) is the nearest per-epoch schedule, warmup_epochs=2 a slower one.
- Selection: `fit` stops a phase on `early_stop` epochs without a better validation masked accuracy (the example:
  validation loss) and `select="best_val"` reports the best epoch (the example restores its weights).
- Masked accuracy pools every non-padding target of every caption of the evaluated set (the example averages
  per-batch, per-caption ratios). BLEU-4 (sacrebleu's corpus BLEU, default exp smoothing, on text standardised and
  split as the tokenizer does, greedy decoding from "<start>" until "<end>" or seq_len - 1 ids) is reported next to
  it as a fraction in [0, 1]; the example reports no BLEU.
- Validation: `val_images` carved from the training images (`carve`), else the dataset's own "val" split when it has
  one, else none. There is no probe phase (`probe_epochs` must be 0): one "finetune" phase trains everything but the
  frozen image encoder.
"""
from __future__ import annotations

import hashlib
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from know.data import ImageSet, batches, get_dataset
from know.datasets import entry
from know.device import autocast, fast_layout, resolve_device
from know.errors import KnowError
from know.models import get_head
from know.tasks.base import Phase, Task, finetune_lr
from know.tasks.base import transfer_unit, upstream_spec
from know.tasks.classification import builder_kwargs, carve, eval_subset, infer_num_classes
from know.train import generator, seed_from, seeded_model

PAD, OOV, START, END = "", "[UNK]", "<start>", "<end>"  # ids 0 and 1 are Keras' mask and OOV tokens
STRIP_CHARS = string.punctuation.replace("<", "").replace(">", "")  # the example's strip_chars
_STRIP = re.compile(f"[{re.escape(STRIP_CHARS)}]")
KERAS_LN_EPS = 1e-3  # Keras LayerNormalization's default epsilon
CAPTION_UPDATES = ("each", "mean")
LOGIT_BUDGET = 1 << 26  # evaluation: at most this many logits at once (256 MB in fp32)


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class CaptioningOptions:
    """`TransferCfg.options` of the captioning task. Defaults: the Keras example's values (see the module docstring;
    the example is our inference of the paper's recipe)."""

    vocab_size: int = 10000  # VOCAB_SIZE: TextVectorization(max_tokens), padding and OOV included
    seq_len: int = 25  # SEQ_LENGTH: ids per caption with <start> and <end> (the decoder sees seq_len - 1)
    embed_dim: int = 512  # EMBED_DIM: encoder output, token embeddings, attention width
    ff_dim: int = 512  # FF_DIM: the decoder's feed-forward width
    enc_heads: int = 1  # TransformerEncoderBlock(num_heads=1)
    dec_heads: int = 2  # TransformerDecoderBlock(num_heads=2)
    min_tokens: int = 5  # an image with a caption of fewer whitespace tokens is dropped ...
    max_tokens: int = 25  # ... or of more (the example: SEQ_LENGTH)
    test_fraction: float = 0.2  # datasets with only an "all" split: the held-out share (train_size=0.8)
    enc_attn_dropout: float = 0.0  # the encoder's MultiHeadAttention(dropout=0.0)
    attn_dropout: float = 0.1  # the decoder's two MultiHeadAttention(dropout=0.1)
    ff_dropout: float = 0.3  # dropout_1, between the decoder's feed-forward layers
    out_dropout: float = 0.5  # dropout_2, before the vocabulary layer
    caption_updates: str = "each"  # "each": an optimizer update per caption (the example's); "mean": one per batch

    @classmethod
    def from_dict(cls, raw: dict | None) -> CaptioningOptions:
        raw = dict(raw or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise KnowError(f"unknown captioning option(s) {', '.join(unknown)} in --transfer.options; known: "
                            f"{', '.join(known)}")
        for k, v in raw.items():
            want = known[k].type
            ok = isinstance(v, str) if want == "str" else (
                isinstance(v, (int, float)) and not isinstance(v, bool) and (want == "float" or float(v).is_integer()))
            if not ok:
                raise KnowError(f"captioning option {k}={v!r}: expected {want}")
            raw[k] = v if want == "str" else (float(v) if want == "float" else int(v))
        opts = cls(**raw)
        opts.check()
        return opts

    def check(self) -> None:
        bad = []
        if self.vocab_size < 4:
            bad.append(f"vocab_size={self.vocab_size} (at least 4: padding, OOV, <start>, <end>)")
        if self.seq_len < 2:
            bad.append(f"seq_len={self.seq_len} (at least 2)")
        for name in ("embed_dim", "ff_dim", "enc_heads", "dec_heads"):
            if getattr(self, name) < 1:
                bad.append(f"{name}={getattr(self, name)} (at least 1)")
        if self.embed_dim % self.enc_heads or self.embed_dim % self.dec_heads:
            bad.append(f"embed_dim={self.embed_dim} (a multiple of enc_heads and dec_heads)")
        if not 0 <= self.min_tokens <= self.max_tokens:
            bad.append(f"min_tokens={self.min_tokens}, max_tokens={self.max_tokens} (0 <= min <= max)")
        if not 0 < self.test_fraction < 1:
            bad.append(f"test_fraction={self.test_fraction} (in (0, 1))")
        for name in ("enc_attn_dropout", "attn_dropout", "ff_dropout", "out_dropout"):
            if not 0 <= getattr(self, name) < 1:
                bad.append(f"{name}={getattr(self, name)} (in [0, 1))")
        if self.caption_updates not in CAPTION_UPDATES:
            bad.append(f"caption_updates={self.caption_updates} (one of {', '.join(CAPTION_UPDATES)})")
        if bad:
            raise KnowError("bad captioning option(s): " + "; ".join(bad))


# ---------------------------------------------------------------------------------------------- text
def standardize(text: str) -> list[str]:
    """The example's custom_standardization then Keras' whitespace split: lowercase, strip punctuation but "<" and
    ">", split on whitespace."""
    return _STRIP.sub("", text.lower()).split()


def raw_token_count(caption: str) -> int:
    """Tokens as the example counts them to drop an image: the raw caption split on whitespace."""
    return len(caption.strip().split())


def keeps(captions: Sequence[str], min_tokens: int, max_tokens: int) -> bool:
    """Whether an image stays: every caption has min_tokens .. max_tokens raw tokens."""
    return all(min_tokens <= raw_token_count(c) <= max_tokens for c in captions)


class Tokenizer:
    """Keras TextVectorization as the example sets it up: `vocab[0]` padding, `vocab[1]` OOV, then the learned
    tokens; `encode` wraps each caption in <start> / <end> and pads or truncates it to `seq_len` ids."""

    def __init__(self, vocab: Sequence[str], seq_len: int):
        if list(vocab[:2]) != [PAD, OOV] or START not in vocab or END not in vocab:
            raise KnowError(f"a caption vocabulary starts with padding and OOV and holds {START} and {END}: "
                            "raise vocab_size")
        self.vocab, self.seq_len = list(vocab), seq_len
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.start_id, self.end_id = self.index[START], self.index[END]

    @classmethod
    def fit(cls, captions: Iterable[str], vocab_size: int, seq_len: int) -> Tokenizer:
        """The vocabulary of `captions` (the training captions): at most vocab_size - 2 tokens, most frequent first,
        ties broken by the token, descending (Keras' np.lexsort((tokens, counts))[::-1])."""
        counts = Counter(w for c in captions for w in standardize(f"{START} {c} {END}"))
        counts.pop(PAD, None)
        counts.pop(OOV, None)
        learned = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:vocab_size - 2]
        return cls([PAD, OOV, *(w for w, _ in learned)], seq_len)

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, caption: str) -> list[int]:
        words = standardize(f"{START} {caption} {END}")[:self.seq_len]
        return [self.index.get(w, 1) for w in words] + [0] * (self.seq_len - len(words))

    def encode(self, captions: Sequence[str]) -> Tensor:
        """int64 (len(captions), seq_len)."""
        return torch.tensor([self.ids(c) for c in captions], dtype=torch.long).view(len(captions), self.seq_len)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of generated ids up to (without) the first <end>; padding ids are skipped."""
        out = []
        for i in ids:
            if i == self.end_id:
                break
            if i != 0:
                out.append(self.vocab[i])
        return out

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.vocab).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- metrics
def masked_accuracy_counts(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(correct argmax predictions at non-padding targets, non-padding targets); logits (..., V), targets (...)."""
    mask = targets != 0
    return int(((logits.argmax(-1) == targets) & mask).sum()), int(mask.sum())


def masked_accuracy(logits: Tensor, targets: Tensor) -> float:
    correct, total = masked_accuracy_counts(logits, targets)
    return correct / max(1, total)


def caption_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Masked mean cross-entropy of each caption index: logits (B, K, T, V), targets (B, K, T) -> (K,), each the
    example's calculate_loss over the batch's captions of that index (sum over non-padding targets / their count)."""
    mask = (targets != 0).to(torch.float32)
    ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)
    return (ce * mask).sum((0, 2)) / mask.sum((0, 2)).clamp_min(1)


def bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (4-grams, exp smoothing) / 100 of already standardised, space-joined texts; each
    hypothesis has its list of references (lists may differ in length)."""
    import sacrebleu

    if not hypotheses:
        return 0.0
    k = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(k)]
    return sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(list(hypotheses), streams).score / 100


# ---------------------------------------------------------------------------------------------- model
def _keras_uniform_(t: Tensor, fan_in: int, fan_out: int) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        t.uniform_(-limit, limit)


def _keras_dense(layer: nn.Linear) -> nn.Linear:
    _keras_uniform_(layer.weight, layer.in_features, layer.out_features)
    nn.init.zeros_(layer.bias)
    return layer


def _keras_attention(dim: int, heads: int, dropout: float) -> nn.MultiheadAttention:
    """nn.MultiheadAttention initialised as Keras initialises MultiHeadAttention's einsum kernels: glorot-uniform
    with fans from the shapes (in, heads, head_dim) for query/key/value and (heads, head_dim, out) for the output
    (Keras' rule for kernels of rank > 2: fan = the last two dims times the product of the rest); zero biases."""
    att = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
    d = dim // heads
    for part in att.in_proj_weight.data.chunk(3):
        _keras_uniform_(part, heads * dim, d * dim)
    _keras_uniform_(att.out_proj.weight, d * heads, dim * heads)
    nn.init.zeros_(att.in_proj_bias)
    nn.init.zeros_(att.out_proj.bias)
    return att


class EncoderBlock(nn.Module):
    """The example's TransformerEncoderBlock: LayerNorm, Dense(embed_dim, relu), self-attention, LayerNorm(x + a)."""

    def __init__(self, in_dim: int, embed_dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim, eps=KERAS_LN_EPS)
        self.dense = _keras_dense(nn.Linear(in_dim, embed_dim))
        self.attn = _keras_attention(embed_dim, heads, dropout)
        self.norm_out = nn.LayerNorm(embed_dim, eps=KERAS_LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.dense(self.norm_in(x)))
        return self.norm_out(x + self.attn(x, x, x, need_weights=False)[0])


class DecoderBlock(nn.Module):
    """The example's TransformerDecoderBlock (see the module docstring), returning logits."""

    def __init__(self, vocab: int, seq_len: int, embed_dim: int, ff_dim: int, heads: int, attn_dropout: float,
                 ff_dropout: float, out_dropout: float):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, embed_dim), nn.Embedding(seq_len, embed_dim)
        for emb in (self.tokens, self.positions):
            nn.init.uniform_(emb.weight, -0.05, 0.05)  # Keras Embedding default
        self.scale = math.sqrt(embed_dim)
        self.self_attn = _keras_attention(embed_dim, heads, attn_dropout)
        self.cross_attn = _keras_attention(embed_dim, heads, attn_dropout)
        self.ff1, self.ff2 = _keras_dense(nn.Linear(embed_dim, ff_dim)), _keras_dense(nn.Linear(ff_dim, embed_dim))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(embed_dim, eps=KERAS_LN_EPS) for _ in range(3))
        self.drop_ff, self.drop_out = nn.Dropout(ff_dropout), nn.Dropout(out_dropout)
        self.out = _keras_dense(nn.Linear(embed_dim, vocab))

    def forward(self, tokens: Tensor, memory: Tensor, last_only: bool = False) -> Tensor:
        """Logits (B, L, V) of the next id at every position of `tokens` (B, L) (only the last one when
        `last_only`: greedy decoding), attending to `memory` (B, S, E)."""
        n = tokens.shape[1]
        x = self.tokens(tokens) * self.scale + self.positions.weight[:n]
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.norm1(x + self.self_attn(x, x, x, attn_mask=causal, need_weights=False, is_causal=True)[0])
        if last_only:  # everything after the self-attention acts per position
            x = x[:, -1:]
        x = self.norm2(x + self.cross_attn(x, memory, memory, need_weights=False)[0])
        x = self.norm3(x + self.ff2(self.drop_ff(F.relu(self.ff1(x)))))
        return self.out(self.drop_out(x))


def backbone_features(net: nn.Module, x: Tensor) -> Tensor:
    """The frozen network's features of `x` as a token sequence (B, tokens, C): `forward_features` when the network
    has one (a (B, C, H, W) map becomes H*W tokens; timm's NHWC maps and (B, N, C) sequences are read as such), else
    the input of its classifier head ((B, C): one token)."""
    if hasattr(net, "forward_features"):
        out = net.forward_features(x)
    else:
        seen = []
        hook = get_head(net)[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            net(x)
        finally:
            hook.remove()
        out = seen[0]
    if out.dim() == 4:
        out = out.flatten(1, 2) if getattr(net, "output_fmt", "NCHW") == "NHWC" else out.flatten(2).transpose(1, 2)
    elif out.dim() == 2:
        out = out[:, None]
    if out.dim() != 3:
        raise KnowError(f"cannot read {type(net).__name__}'s features (shape {tuple(out.shape)}) as a token sequence")
    return out


class CaptionModel(nn.Module):
    """backbone (the upstream network, frozen, always in eval mode) -> EncoderBlock -> DecoderBlock."""

    def __init__(self, backbone: nn.Module, image_shape: tuple[int, int, int], vocab: int, opts: CaptioningOptions):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        p = next(backbone.parameters())
        with torch.no_grad():
            probe = torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype)
            feat_dim = backbone_features(backbone, probe).shape[-1]
        self.encoder = EncoderBlock(feat_dim, opts.embed_dim, opts.enc_heads, opts.enc_attn_dropout)
        self.decoder = DecoderBlock(vocab, opts.seq_len, opts.embed_dim, opts.ff_dim, opts.dec_heads,
                                    opts.attn_dropout, opts.ff_dropout, opts.out_dropout)

    def train(self, mode: bool = True) -> CaptionModel:
        super().train(mode)
        self.backbone.eval()  # frozen, normalisation statistics included
        return self

    def features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return backbone_features(self.backbone, images)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(self.features(images))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits: tokens (B, L) or (B, K, L) (K captions per image) -> (..., L, V)."""
        memory = self.encode(images)
        if tokens.dim() == 2:
            return self.decoder(tokens, memory)
        b, k, n = tokens.shape
        return self.decoder(tokens.reshape(b * k, n), memory.repeat_interleave(k, 0)).view(b, k, n, -1)


@torch.no_grad()
def greedy_decode(decoder: DecoderBlock, memory: Tensor, start_id: int, end_id: int, steps: int) -> Tensor:
    """Greedy ids (B, steps) from <start>: argmax at each step, padding (0) after a row's <end>."""
    b = memory.shape[0]
    seq = torch.full((b, 1), start_id, dtype=torch.long, device=memory.device)
    out = torch.zeros(b, steps, dtype=torch.long, device=memory.device)
    done = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for t in range(steps):
        nxt = decoder(seq, memory, last_only=True)[:, -1].argmax(-1).masked_fill(done, 0)
        out[:, t] = nxt
        done |= nxt == end_id
        if bool(done.all()):
            break
        seq = torch.cat([seq, nxt[:, None]], 1)
    return out


# ---------------------------------------------------------------------------------------------- the task
class Captioning(Task):
    """Captioning transfer (see the module docstring): primary metric masked accuracy, BLEU-4 beside it."""

    metric = "masked_acc"

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        self.options = CaptioningOptions.from_dict(cfg.options)
        if cfg.probe_epochs > 0:
            raise KnowError(f"--transfer.probe_epochs={cfg.probe_epochs}: captioning has no probe phase (the image "
                            "encoder stays frozen, everything else trains from the start); set it to 0")
        self.tokenizer: Tokenizer | None = None
        self._cache: dict[int, tuple[ImageSet, Tensor]] = {}

    # -- data
    def data_kwargs(self, upstream: dict) -> dict:
        return dict(root=self.cfg.data_root, channels=upstream["in_chans"], size=upstream["img_size"],
                    norm=upstream["norm"], device=resolve_device(self.cfg.device))

    def _filtered(self, data: ImageSet) -> ImageSet:
        """The images whose captions all have min_tokens .. max_tokens raw tokens (the example's filter)."""
        if data.captions is None:
            raise KnowError(f"dataset {data.name} has no captions; the captioning task needs a captioned one "
                            "(caption_canvases, flickr8k)")
        o = self.options
        keep = [i for i, caps in enumerate(data.captions) if keeps(caps, o.min_tokens, o.max_tokens)]
        if not keep:
            raise KnowError(f"no image of {data.name}/{data.split} has all captions within {o.min_tokens}.."
                            f"{o.max_tokens} tokens; change the min_tokens / max_tokens options")
        return data if len(keep) == len(data) else data.subset(torch.tensor(keep))

    def load(self, upstream: dict) -> tuple[ImageSet, ImageSet | None, ImageSet]:
        c, o, kw, name = self.cfg, self.options, self.data_kwargs(upstream), self.cfg.dataset
        e = entry(name)
        if e.test_split == "all" or "train" not in e.splits:  # the example's seeded 80/20 split by image
            full = self._filtered(get_dataset(name, "all", **kw))
            perm = torch.randperm(len(full), generator=generator(name, "caption-split"))
            cut = int(len(full) * (1 - o.test_fraction))
            if not 0 < cut < len(full):
                raise KnowError(f"test_fraction={o.test_fraction} leaves no train or test image of {name}")
            whole, test = full.subset(perm[:cut]), full.subset(perm[cut:])
        else:
            whole = self._filtered(get_dataset(name, "train", **kw))
            test = self._filtered(get_dataset(name, e.test_split, **kw))
        train_idx, val_idx = carve(len(whole), name, c.val_images, c.max_images)
        train = whole.subset(train_idx)
        val = whole.subset(val_idx) if len(val_idx) else (
            self._filtered(get_dataset(name, "val", **kw)) if "val" in e.splits and e.test_split != "val" else None)
        self.tokenizer = Tokenizer.fit([cap for caps in train.captions for cap in caps], o.vocab_size, o.seq_len)
        return train, val, eval_subset(test, c.eval_images)

    def tokens(self, data: ImageSet) -> Tensor:
        """int64 (N, K, seq_len) ids of every caption of `data`, on its device (computed once per set)."""
        hit = self._cache.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
        counts = {len(caps) for caps in data.captions}
        if len(counts) != 1:
            raise KnowError(f"{data.name}/{data.split}: every image needs the same number of captions "
                            f"(found {sorted(counts)})")
        k = counts.pop()
        ids = self.tokenizer.encode([c for caps in data.captions for c in caps]).view(len(data), k, -1)
        ids = ids.to(data.x.device)
        self._cache[id(data)] = (data, ids)
        return ids

    def fingerprint(self) -> tuple:
        return ("vocab", self.tokenizer.digest() if self.tokenizer else None)

    # -- model and phases
    def build(self, state: dict[str, Tensor], upstream: dict, data: ImageSet) -> nn.Module:
        name, kw = upstream["model"], upstream["model_kwargs"]
        n_up = upstream["num_classes"] or infer_num_classes(name, kw, state)
        in_chans, img_size, _ = upstream_spec(state, kw)
        backbone = seeded_model(name, seed_from(self.seed, "upstream-init"), n_up, in_chans, img_size,
                                builder_kwargs(kw))
        try:
            backbone.load_state_dict(state)
        except RuntimeError as e:
            raise KnowError(f"checkpoint does not fit {name} {builder_kwargs(kw)}: {str(e).splitlines()[0]}") from None
        backbone = backbone.to(data.x.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(self.seed, "captioner"))
            model = CaptionModel(backbone, data.shape, len(self.tokenizer), self.options)
        return fast_layout(model.to(data.x.device))

    def phases(self) -> list[Phase]:
        c = self.cfg
        return [Phase("finetune", c.finetune_epochs, c.optimizer, finetune_lr(c), trainable_names, c.weight_decay)]

    # -- training and evaluation
    def train_epoch(self, model, opt, data, gen, max_steps):
        """One epoch; dropout draws from a seed taken from `gen` (the epoch's generator), so a resumed run repeats
        an uninterrupted one."""
        dev = data.x.device
        seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.random.default_generator.manual_seed(seed)
            if dev.type == "cuda":
                with torch.cuda.device(dev):
                    torch.cuda.manual_seed(seed)
            return self._train_epoch(model, opt, data, gen, max_steps)

    def _train_epoch(self, model, opt, data, gen, max_steps):
        model.train()
        ids, dev, bs = self.tokens(data), data.x.device, self.cfg.batch_size
        planned = -(-len(data) // bs)
        steps = planned if max_steps is None else min(max_steps, planned)
        total, seen, taken = torch.zeros((), device=dev), 0, 0
        for step, b in enumerate(batches(len(data), bs, gen, device=dev)):
            if step == steps:
                break
            x, _ = data.take(b)
            seq = ids[b]
            inp, tgt = seq[..., :-1], seq[..., 1:]
            if self.options.caption_updates == "mean":
                with autocast(dev, self.cfg.amp):
                    loss = caption_losses(model(x, inp), tgt).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                batch_loss = loss.detach()
            else:  # the example: one update per caption, the image features computed once
                with autocast(dev, self.cfg.amp):
                    feats = model.features(x)
                batch_loss = torch.zeros((), device=dev)
                for k in range(seq.shape[1]):
                    with autocast(dev, self.cfg.amp):
                        logits = model.decoder(inp[:, k], model.encoder(feats))
                        loss = caption_losses(logits[:, None], tgt[:, k:k + 1])[0]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    batch_loss += loss.detach()
                batch_loss = batch_loss / seq.shape[1]
            total += batch_loss.float() * len(b)
            seen += len(b)
            taken += 1
        return float(total) / max(1, seen), taken

    @torch.no_grad()
    def evaluate(self, model, data, max_batches):
        was_training = model.training
        model.eval()
        ids, dev, tok = self.tokens(data), data.x.device, self.tokenizer
        correct = total = 0
        hyps, refs = [], []
        bs = self.cfg.eval_batch_size
        chunk = max(1, LOGIT_BUDGET // (len(tok) * (ids.shape[-1] - 1)))
        for i, start in enumerate(range(0, len(data), bs)):
            if max_batches is not None and i == max_batches:
                break
            x, _ = data.take(slice(start, start + bs))
            seq = ids[start:start + bs]
            with autocast(dev, self.cfg.amp):
                memory = model.encode(x)
                for k in range(seq.shape[1]):
                    for j in range(0, len(seq), chunk):
                        logits = model.decoder(seq[j:j + chunk, k, :-1], memory[j:j + chunk])
                        c, n = masked_accuracy_counts(logits, seq[j:j + chunk, k, 1:])
                        correct, total = correct + c, total + n
                out = greedy_decode(model.decoder, memory, tok.start_id, tok.end_id, tok.seq_len - 1)
            hyps += [" ".join(tok.decode(row)) for row in out.tolist()]
            refs += [[" ".join(standardize(c)) for c in caps] for caps in data.captions[start:start + bs]]
        model.train(was_training)
        return {"masked_acc": correct / max(1, total), "bleu4": bleu4(hyps, refs)}


def trainable_names(model: nn.Module) -> set[str]:
    """Everything but the frozen image encoder."""
    return {n for n, _ in model.named_parameters() if not n.startswith("backbone.")}


def unit_transfer(cfg: dict, out, deps: dict) -> dict:
    """One cached fine-tune run of this task (`know.tasks.base.transfer_unit`)."""
    return transfer_unit(Captioning, cfg, out, deps)
