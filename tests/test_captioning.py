"""Captioning (T-E): the Keras example's tokenizer, filter, loss and metrics on known answers; the frozen image encoder
stays frozen; a whole transfer run on caption_canvases (CPU seconds)."""
from dataclasses import replace

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from know.config import TransferCfg
from know.data import ImageSet
from know.datasets import fake
from know.errors import DatasetMissing, KnowError
from know.tasks import task_class
from know.tasks.base import _trainable
from know.tasks.captioning import (Captioning, CaptioningOptions, Tokenizer, bleu4, caption_losses, greedy_decode,
                                   keeps, masked_accuracy, masked_accuracy_counts, standardize)
from know.tasks.classification import builder_kwargs
from know.train import make_optimizer, seeded_model
from know.tasks.base import upstream_info
from know.transfer import run_transfer
from tests.conftest import require

TINY = {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1], "img_size": 64,
        "in_chans": 3}
SMALL = {"embed_dim": 16, "ff_dim": 16}  # decoder widths for speed (defaults: the example's 512)
CFG = TransferCfg(task="captioning", dataset="caption_canvases", probe_epochs=0, finetune_epochs=1, batch_size=8,
                  eval_batch_size=8, device="cpu", options=SMALL)


def _state(name: str, kwargs: dict, classes: int = 10) -> dict:
    kw = builder_kwargs(kwargs)
    return {k: v.clone() for k, v in seeded_model(name, 0, classes, 3, kwargs.get("img_size", 32), kw).state_dict()
            .items()}


# ------------------------------------------------------------------ tokenizer and filter: known answers

def test_standardize_is_the_examples():
    assert standardize("A dog, runs-fast!  (Twice) <start> x<y>z .") == ["a", "dog", "runsfast", "twice", "<start>",
                                                                          "x<y>z"]


def test_vocabulary_order_oov_padding_and_markers():
    captions = ["The cat", "the dog, the", "A cat."]  # counts: the 3, <start> 3, <end> 3, cat 2, dog 1, a 1
    tok = Tokenizer.fit(captions, vocab_size=10, seq_len=6)
    # by count, ties by the token descending (Keras' np.lexsort(...)[::-1]): "the" > "<start>" > "<end>", "dog" > "a"
    assert tok.vocab == ["", "[UNK]", "the", "<start>", "<end>", "cat", "dog", "a"]
    small = Tokenizer.fit(captions, vocab_size=6, seq_len=6)
    assert small.vocab == ["", "[UNK]", "the", "<start>", "<end>", "cat"]
    assert small.encode(["The DOG!", "cat the cat the cat"]).tolist() == [[3, 2, 1, 4, 0, 0], [3, 5, 2, 5, 2, 5]]
    assert Tokenizer.fit(captions, 10, seq_len=3).encode(["the dog"]).tolist() == [[3, 2, 6]]  # truncated
    assert small.decode([5, 0, 2, 1, 4, 5]) == ["cat", "the", "[UNK]"]  # stops at <end>, skips padding
    with pytest.raises(KnowError, match="vocab_size"):
        Tokenizer.fit(captions, vocab_size=4, seq_len=6)  # no room for <end>
    assert small.digest() != tok.digest()


def test_images_with_too_short_or_too_long_captions_are_dropped():
    assert keeps(["a b c d e", "a b c d ."], 5, 25)  # raw whitespace tokens: the final "." counts
    assert not keeps(["a b c d e", "a b c d"], 5, 25)
    assert keeps([" ".join("w" * 25)], 5, 25) and not keeps([" ".join("w" * 26)], 5, 25)
    task = Captioning(replace(CFG, options={"min_tokens": 2, "max_tokens": 3}), 0)
    caps = [["a b", "a b c"], ["a", "a b"], ["a b c d", "b c"], ["b c", "c b a"]]
    data = ImageSet(torch.arange(4.0).view(4, 1, 1, 1), None, 0, "toy", "train", torch.zeros(1, 1, 1), captions=caps)
    kept = task._filtered(data)
    assert kept.captions == [caps[0], caps[3]] and kept.x.flatten().tolist() == [0.0, 3.0]


def test_options_and_probe_phase_are_checked():
    assert CaptioningOptions() == CaptioningOptions.from_dict({})
    assert (CaptioningOptions.vocab_size, CaptioningOptions.seq_len, CaptioningOptions.embed_dim) == (10000, 25, 512)
    with pytest.raises(KnowError, match="colour, vocab_sise"):
        Captioning(replace(CFG, options={"vocab_sise": 5, "colour": 1}), 0)
    with pytest.raises(KnowError, match="dec_heads"):
        Captioning(replace(CFG, options={"embed_dim": 10, "dec_heads": 3}), 0)
    with pytest.raises(KnowError, match="expected int"):
        Captioning(replace(CFG, options={"seq_len": 2.5}), 0)
    with pytest.raises(KnowError, match="probe_epochs=10.*set it to 0"):
        Captioning(replace(CFG, probe_epochs=10), 0)
    assert task_class("captioning") is Captioning


# ------------------------------------------------------------------ loss and metrics

def test_masked_accuracy_ignores_padding():
    targets = torch.tensor([[5, 3, 0, 0], [2, 2, 2, 0]])
    predicted = torch.tensor([[5, 2, 0, 7], [2, 2, 1, 0]])  # right at 5, 2, 2; padding positions never count
    logits = F.one_hot(predicted, 8).float()
    assert masked_accuracy_counts(logits, targets) == (3, 5)
    assert masked_accuracy(logits, targets) == pytest.approx(3 / 5)


def test_caption_losses_are_masked_means_per_caption_index():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 2, 4, 6), torch.randint(1, 6, (3, 2, 4))
    targets[0, 0, 2:] = 0
    targets[2, 1, 1:] = 0
    want = [F.cross_entropy(logits[:, k].flatten(0, 1), targets[:, k].flatten(), ignore_index=0) for k in range(2)]
    assert torch.allclose(caption_losses(logits, targets), torch.stack(want))


def test_bleu4_known_answer_and_sacrebleu():
    # p1..p4 = 5/6, 3/5, 2/4, 1/3, equal lengths: BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4)
    assert bleu4(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(
        (5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25)
    hyps = ["a dog runs on the grass", "two digits seven and one"]
    refs = [["a dog runs in the grass", "the dog runs on grass"], ["two digits seven and one", "seven one"]]
    ours = bleu4(hyps, refs)
    assert 0 < ours < 1
    streams = [list(r) for r in zip(*refs)]
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score / 100)
    assert bleu4(["seven one", "x"], [["seven one", "y z"], ["x"]]) == pytest.approx(
        sacrebleu.corpus_bleu(["seven one", "x"], [["seven one", "x"], ["y z", None]], tokenize="none").score / 100)


def test_perfect_greedy_output_scores_bleu4_one():
    tok = Tokenizer.fit(["two digits seven and one", "a seven on the left and a one on the right"], 50, 12)
    want = tok.encode(["two digits seven and one", "a seven on the left and a one on the right"])

    def oracle(tokens, memory, last_only=False):  # emits row r's caption id by id
        t = tokens.shape[1]
        return F.one_hot(want[:, t], len(tok)).float()[:, None] * 10

    out = greedy_decode(oracle, torch.zeros(2, 1, 4), tok.start_id, tok.end_id, tok.seq_len - 1)
    end_at = (want[0] == tok.end_id).nonzero()[0, 0]
    assert out[0, :end_at].tolist() == want[0, 1:end_at + 1].tolist() and out[0, end_at:].eq(0).all()
    hyps = [" ".join(tok.decode(r)) for r in out.tolist()]
    assert hyps == ["two digits seven and one", "a seven on the left and a one on the right"]
    assert bleu4(hyps, [["two digits seven and one", "seven one"], [hyps[1]]]) == pytest.approx(1.0)


def test_decoder_is_causal_and_incremental_decoding_matches_teacher_forcing():
    from know.tasks.captioning import DecoderBlock
    torch.manual_seed(0)
    dec = DecoderBlock(20, 8, 16, 16, 2, 0.1, 0.3, 0.5).eval()
    memory, tokens = torch.randn(3, 4, 16), torch.randint(1, 20, (3, 7))
    with torch.no_grad():
        full = dec(tokens, memory)
        changed = tokens.clone()
        changed[:, 4:] = torch.randint(1, 20, (3, 3))
        assert torch.allclose(dec(changed, memory)[:, :4], full[:, :4], atol=1e-5)  # the future is not seen
        for t in (1, 4, 7):
            assert torch.allclose(dec(tokens[:, :t], memory, last_only=True)[:, 0], full[:, t - 1], atol=1e-5)


# ------------------------------------------------------------------ the frozen image encoder

def _toy_captions(n: int, seed: int = 0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    words = ["red", "green", "one", "two", "three", "left", "right", "a", "the", "digit"]
    return [[" ".join(words[int(i)] for i in torch.randint(0, 10, (6,), generator=g)) for _ in range(5)]
            for _ in range(n)]


@pytest.mark.parametrize("name,kwargs", [("debugnet", {"in_chans": 3, "img_size": 32}),
                                         ("timm:pvt_v2_b0", {**TINY, "img_size": 32})])
@pytest.mark.parametrize("updates", ["each", "mean"])
def test_encoder_stays_frozen_while_the_decoder_trains(name, kwargs, updates):
    state = _state(name, kwargs, classes=4)
    if name == "debugnet":  # make the BN statistics something a training-mode pass would move
        state["bn.running_mean"] += 0.5
    cfg = replace(CFG, options={**SMALL, "caption_updates": updates})
    task = Captioning(cfg, 0)
    data = ImageSet(torch.randn(12, 3, 32, 32), None, 0, "toy", "train", torch.zeros(3, 32, 32),
                    captions=_toy_captions(12))
    task.tokenizer = Tokenizer.fit([c for caps in data.captions for c in caps], 100, 10)
    model = task.build(state, upstream_info(state, name, kwargs, 4), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phase = task.phases()[0]
    opt = make_optimizer(phase.optimizer, _trainable(model, phase), 1e-3)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    loss, steps = task.train_epoch(model, opt, data, torch.Generator().manual_seed(0), None)
    assert steps == 2 and loss > 0
    assert model.training and not model.backbone.training and not any(m.training for m in model.backbone.modules())
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights, BN/LN buffers too
    assert {k for k in before if not torch.equal(before[k], after[k])} == {
        k for k, p in model.named_parameters() if not k.startswith("backbone.")}  # everything else trained
    metrics = task.evaluate(model, data, None)
    assert set(metrics) == {"masked_acc", "bleu4"} and all(0 <= v <= 1 for v in metrics.values())
    assert model.training  # evaluate restores the mode


# ------------------------------------------------------------------ data and whole runs

def _load(task, state, name, kwargs):
    try:
        return task.load(upstream_info(state, name, kwargs))
    except DatasetMissing as e:
        require(False, f"offline source data missing: {e}")


def test_caption_canvases_splits_filter_and_vocabulary():
    state = _state("timm:pvt_v2_b0", TINY)
    task = Captioning(replace(CFG, max_images=600), 0)
    train, val, test = _load(task, state, "timm:pvt_v2_b0", TINY)
    assert (val.split, test.split, len(train)) == ("val", "test", 600) and train.x.shape[1:] == (3, 64, 64)
    for s in (train, val, test):  # min_tokens=5 drops the one-digit canvases ("one digit seven": 3 tokens)
        assert all(keeps(caps, 5, 25) for caps in s.captions)
        assert not any(caps[0].startswith("one digit") for caps in s.captions)
    assert task.tokenizer.vocab[:4] == ["", "[UNK]", "<start>", "<end>"] and len(task.tokenizer) < 60
    ids = task.tokens(train)
    assert ids.shape == (600, 5, 25) and (ids[:, :, 0] == task.tokenizer.start_id).all()
    assert task.fingerprint() == ("vocab", task.tokenizer.digest())
    carved = Captioning(replace(CFG, val_images=100, max_images=300), 0)
    tr, va, _ = _load(carved, state, "timm:pvt_v2_b0", TINY)
    assert (len(tr), len(va), va.split) == (300, 100, "train")


def test_flickr8k_all_split_is_a_seeded_80_20_split(tmp_path):
    fake.write_fake_flickr8k(tmp_path, images=10, size=(32, 32))
    cfg = replace(CFG, dataset="flickr8k", data_root=str(tmp_path))
    state = _state("debugnet", {"in_chans": 3})
    train, val, test = Captioning(cfg, 0).load(upstream_info(state, "debugnet", {"in_chans": 3}))
    assert (len(train), len(test), val) == (8, 2, None)
    assert not {tuple(c) for c in train.captions} & {tuple(c) for c in test.captions}
    again = Captioning(cfg, 1).load(upstream_info(state, "debugnet", {"in_chans": 3}))
    assert again[2].captions == test.captions  # the split is fixed, not per trial


def test_run_transfer_on_caption_canvases():
    state = _state("timm:pvt_v2_b0", TINY)
    cfg = replace(CFG, finetune_epochs=2, limit_steps=2, eval_images=16, schedule="warmup_constant", warmup_epochs=2,
                  finetune_lr=1e-4, max_images=200)
    try:
        res = run_transfer(cfg, state, "timm:pvt_v2_b0", TINY, seed=0, progress=False)
    except DatasetMissing as e:
        require(False, f"offline source data missing: {e}")
    assert res.metric == "masked_acc" and set(res.final) == {"masked_acc", "bleu4"}
    assert all(0 <= v <= 1 for v in res.final.values())
    row = res.log[0]
    assert (row["phase"], row["steps"], row["lr"]) == ("finetune", 2, pytest.approx(5e-5))
    assert {"val_masked_acc", "val_bleu4"} <= set(row) and "test_masked_acc" not in row  # the test split: at the end


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path, monkeypatch):
    """Dropout draws from the epoch's generator: an interrupted run resumed from its checkpoint logs the same."""
    state = _state("timm:pvt_v2_b0", TINY)
    cfg = replace(CFG, finetune_epochs=2, max_images=32, val_images=8, eval_images=8, batch_size=16)
    try:
        whole = run_transfer(cfg, state, "timm:pvt_v2_b0", TINY, seed=0, progress=False)
    except DatasetMissing as e:
        require(False, f"offline source data missing: {e}")
    original, calls = Captioning.train_epoch, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Captioning, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(cfg, state, "timm:pvt_v2_b0", TINY, seed=0, ckpt_path=tmp_path / "c.pt", progress=False)
    monkeypatch.setattr(Captioning, "train_epoch", original)
    torch.rand(3)  # the global generator's state does not matter
    resumed = run_transfer(cfg, state, "timm:pvt_v2_b0", TINY, seed=0, ckpt_path=tmp_path / "c.pt", progress=False)
    assert resumed.log == whole.log
