"""The image encoder on the shared model path: its memory is what a text encoder gives (regions
column by column, padding a suffix, independent of the batch's other images), and a model
with attention learns to read a sequence of glyphs that a bottleneck cannot."""

import numpy as np
import pytest
import torch

from attendo.config import Config, ConfigError, config_from_dict
from attendo.data.batch import Image, collate
from attendo.data.vocab import Vocab
from attendo.model.image import ImageEncoder
from attendo.model.size import build_model
from attendo.search import greedy_search


def _image(width: int, seed: int, height: int = 8) -> Image:
    rng = np.random.default_rng(seed)
    return Image(rng.integers(0, 256, (1, height, width), dtype=np.uint8))


@pytest.mark.parametrize("rnn", ["none", "rows", "columns", "conv"])
def test_regions_do_not_depend_on_the_batch(rnn):
    torch.manual_seed(0)
    enc = ImageEncoder(1, 16, layers=3, pools=2, rnn=rnn, dropout=0.3).eval()
    narrow, wide = _image(13, 1), _image(40, 2)
    alone = collate([narrow], None, [0])
    both = collate([narrow, wide], None, [0, 1])
    assert both.src.shape == (2, 1, 8, 40) and both.src.dtype == torch.uint8
    assert both.src_lens.tolist() == [13, 40]
    a = enc(alone.src, alone.src_lens)
    b = enc(both.src, both.src_lens)
    rows = 1 if rnn in ("columns", "conv") else 2  # 8 pixels / 2^2
    cols = [4, 10]  # ceil(13 / 4), ceil(40 / 4)
    assert b.out.shape == (2, rows * 10, 16)
    assert (~b.src_pad_mask).sum(1).tolist() == [rows * c for c in cols]
    n = rows * cols[0]
    assert not b.src_pad_mask[0, :n].any() and b.src_pad_mask[0, n:].all()  # a suffix
    torch.testing.assert_close(b.out[0, :n], a.out[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.final_h[0], a.final_h[0], atol=1e-5, rtol=1e-5)
    assert enc.grid_shape(8, 13) == (rows, cols[0])


def test_regions_are_flattened_column_by_column():
    torch.manual_seed(0)
    enc = ImageEncoder(1, 8, layers=1, pools=0).eval()
    pixels = np.full((1, 3, 5), 255, dtype=np.uint8)
    pixels[0, 1, 3] = 0  # one ink pixel at row 1, column 3
    b = collate([Image(pixels)], None, [0])
    grid, _ = enc.grid(b.src, b.src_lens)  # (1, 3, 5, D)
    out = enc(b.src, b.src_lens).out  # (1, 15, D)
    pos = enc.pos
    rows, cols = pos(3), pos(5)
    for k in range(15):
        c, r = divmod(k, 3)  # region k is column k // H', row k % H'
        want = grid[0, r, c] + torch.cat([rows[r], cols[c]])
        torch.testing.assert_close(out[0, k], want)


def _cfg(**model) -> Config:
    return config_from_dict({
        "data": {"src_type": "image", "train_src": "unused.tsv", "image_height": 8},
        "model": {"encoder": "image", "enc_hidden": 32, "enc_layers": 3, "image_pool": 1,
                  "emb_dim": 16, "dec_hidden": 32, "dropout": 0.0, **model},
    })


def test_config_ties_image_sources_to_the_image_encoder():
    with pytest.raises(ConfigError, match="data.src_type"):
        config_from_dict({"data": {"src_type": "image", "train_src": "x.tsv"}})
    with pytest.raises(ConfigError, match="data.src_type"):
        config_from_dict({"data": {"train_src": "x"}, "model": {"encoder": "image", "enc_layers": 3}})
    with pytest.raises(ConfigError, match="model.copy"):
        _cfg(copy=True)
    with pytest.raises(ConfigError, match="image_pool"):
        _cfg(image_pool=4)


GLYPHS = np.random.default_rng(7).integers(0, 2, (6, 8, 4)).astype(np.uint8)  # 6 symbols


GAPS = 3  # gaps between glyphs: 1..GAPS-1 blank columns (the first one 0..GAPS-1)


def _strip(symbols: list[int], rng) -> Image:
    """Symbols drawn left to right as fixed 8x4 patterns, with random gaps."""
    cols = [np.zeros((8, int(rng.integers(0, GAPS))), np.uint8)]
    for s in symbols:
        cols += [GLYPHS[s], np.zeros((8, int(rng.integers(1, GAPS))), np.uint8)]
    return Image((255 - 255 * np.concatenate(cols, 1))[None].astype(np.uint8))


def _task(n: int, seed: int):
    rng = np.random.default_rng(seed)
    seqs = [list(rng.integers(0, 6, int(rng.integers(3, 7)))) for _ in range(n)]
    return [_strip(s, rng) for s in seqs], [[4 + int(x) for x in s] for s in seqs]


def _train(model, images, ids, max_steps=2500):
    """Adam until the training loss has left its plateau and settled (mean of the last 100
    updates under 0.05), at most ``max_steps``: when attention finds the glyphs varies with
    the seed and the machine (500-1,300 updates here), so the test waits for that event."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    recent = []
    for _ in range(max_steps):
        idx = rng.choice(len(images), 32, replace=False).tolist()
        b = collate([images[i] for i in idx], [ids[i] for i in idx], idx)
        loss, _, n = model.loss(b.src, b.src_lens, b.tgt_in, b.tgt_out, Vocab.PAD)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        recent = (recent + [float(loss.detach()) / int(n)])[-100:]
        if len(recent) == 100 and np.mean(recent) < 0.05:
            break


def _accuracy(model, images, ids) -> float:
    model.eval()
    b = collate(images, None, list(range(len(images))))
    state = model.start(b.src, b.src_lens)
    caps = torch.full((len(images),), 12)
    hyps = greedy_search(model.decoder, state, len(images), Vocab.BOS, Vocab.EOS, caps)
    return float(np.mean([h.tokens[:-1] == y for h, y in zip(hyps, ids)]))


def test_attention_reads_a_strip_of_glyphs_and_looks_where_they_are():
    torch.manual_seed(0)
    images, ids = _task(600, 0)
    # configs/digits.yaml's model: the column BiGRU and additive attention (on the 2-D grid
    # with sinusoidal positions, image_rnn: none, the task stayed on its plateau)
    model = build_model(_cfg(image_rnn="columns", attention="additive", attention_style="bahdanau",
                             enc_hidden=64, dec_hidden=64).model, 1, 10)
    _train(model, images, ids)
    test_images, test_ids = _task(100, 1)
    assert _accuracy(model, test_images, test_ids) >= 0.8
    # the attention of the i-th output symbol peaks in the columns of the i-th glyph
    b = collate(test_images[:1], [test_ids[0]], [0])
    with torch.no_grad():
        _, info = model(b.src, b.src_lens, b.tgt_in)
    peaks = info["attn"][0, :-1].argmax(-1).tolist()  # column of the peak (one per column)
    assert peaks == sorted(peaks)  # left to right


def test_transformer_decoder_reads_images_too():
    torch.manual_seed(0)
    cfg = _cfg(decoder="transformer", d_model=32, heads=2, ff_dim=64, dec_layers=1)
    model = build_model(cfg.model, 1, 10)
    b = collate(*_task(3, 0), [0, 1, 2])
    feats, info = model(b.src, b.src_lens, b.tgt_in)
    assert info["attn"].shape[:2] == b.tgt_in.shape
    assert torch.allclose(info["attn"].sum(-1), torch.ones(b.tgt_in.shape))


def _symbol_errors(model, images, ids) -> float:
    """Edit distance over reference symbols in % (the CER of symbol strings), greedy."""
    from attendo.metrics import char_error_rate

    model.eval()
    b = collate(images, None, list(range(len(images))))
    state = model.start(b.src, b.src_lens)
    caps = torch.full((len(images),), 40)
    hyps = greedy_search(model.decoder, state, len(images), Vocab.BOS, Vocab.EOS, caps)
    letters = "abcdefghij"  # one character per symbol id

    def text(seq):
        return "".join(letters[i - 4] if 4 <= i < 14 else "?" for i in seq)
    return char_error_rate([text(h.tokens[:-1]) for h in hyps], [text(y) for y in ids])


def test_the_windowed_reader_reads_strips_twice_as_long_as_trained():
    """configs/digits.yaml's reader (attention in a window on its last peak, coverage of the
    neighbouring columns, the context kept out of the recurrent state): trained on strips of
    3-6 glyphs, it reads strips of 12, which it never saw, nearly as well. (In one run: 0.2% and
    1.1% symbol errors; the same model with global attention, Bahdanau style and input feeding
    made 0.2% and 39%.)"""
    torch.manual_seed(0)
    images, ids = _task(600, 0)
    model = build_model(_cfg(image_rnn="columns", attention="additive", attention_style="luong",
                             input_feeding=False, attention_window=4, local="previous",
                             coverage=True, coverage_window=5, enc_hidden=64,
                             dec_hidden=64).model, 1, 10)
    _train(model, images, ids)
    rng = np.random.default_rng(3)
    long_ids = [[4 + int(x) for x in rng.integers(0, 6, 12)] for _ in range(100)]
    long_images = [_strip([i - 4 for i in s], rng) for s in long_ids]
    short_images, short_ids = _task(100, 1)
    short, long = (_symbol_errors(model, short_images, short_ids),
                   _symbol_errors(model, long_images, long_ids))
    assert short <= 5, short
    assert long <= 10, (short, long)
