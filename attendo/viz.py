"""Pictures of attention: heatmaps of a_ij with output tokens down and source tokens across.

- :func:`plot_attention`: one matrix (RNN attention, a Transformer's averaged cross-attention,
  or one chosen layer/head), with per-output-token strips (``p_gen``: the share the
  pointer-generator took from the vocabulary, See et al. 2017, sec. 2.2) and a per-source-token
  strip for coverage (the attention each source token received in total, Tu et al. 2016).
- :func:`plot_attention_grid`: every layer (rows) and head (columns) of a Transformer's
  cross-attention (L, H, T, S) or encoder self-attention (L, H, S, S).
- Word alignments over a heatmap (``alignment=``, :class:`LinkSet`): a word link (source word
  i, target word j) marks every (target piece, source piece) cell of those words
  (:func:`link_cells`, the piece rule of :mod:`attendo.align`).

Figure sizes come from :func:`heatmap_figsize` and :func:`grid_figsize`; a PNG is exactly
``figsize * dpi`` pixels (no tight bounding box), so callers know what they get.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .diagnostics import word_groups  # noqa: E402
from .errors import UsageError  # noqa: E402
from .utils import atomic_write_bytes  # noqa: E402

SPECIALS = ("<s>", "</s>", "<unk>", "<pad>")
MARK = "\u2581"  # sentencepiece's word-start mark (also the char tokenizer's space)


def merge_subwords(tokens: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Join sentencepiece pieces ("▁new", "s") into words ("news"); returns the words and the
    piece indices of each word.

    Specials stay words of their own. Tokens without any word-start mark (a word-level
    tokenizer) are already words and stay as they are. A bare "▁" piece (a space of the
    char tokenizer, or sentencepiece's lone mark) starts a word that the next pieces fill.
    """
    tokens = list(tokens)
    if not any(t.startswith(MARK) for t in tokens if t not in SPECIALS):
        return tokens, [[i] for i in range(len(tokens))]
    words: list[str] = []
    groups: list[list[int]] = []
    after_special = True
    for i, tok in enumerate(tokens):
        special = tok in SPECIALS
        if special or tok.startswith(MARK) or after_special:
            words.append(tok if special else tok.lstrip(MARK))
            groups.append([i])
        else:
            words[-1] += tok
            groups[-1].append(i)
        after_special = special
    return [w or MARK for w in words], groups


def merge_matrix(m: np.ndarray, row_groups: list[list[int]] | None,
                 col_groups: list[list[int]] | None) -> np.ndarray:
    """Word-level weights from piece-level ones over the last two axes (..., R, C): a column
    word gets the sum of its pieces' weights (rows still sum to one), a row word the mean of
    its pieces' rows. ``None`` leaves that axis as it is."""
    m = np.asarray(m, dtype=float)
    if col_groups is not None:
        m = np.stack([m[..., g].sum(-1) for g in col_groups], -1)
    if row_groups is not None:
        m = np.stack([m[..., g, :].mean(-2) for g in row_groups], -2)
    return m


# -- word alignments over a heatmap --------------------------------------------------------

LINK_KINDS = ("sure", "possible", "model")
# how each kind is drawn: edge colour, line style, line width; "model" is a dot
LINK_STYLE = {"sure": ("#ff2020", "-", 2.0), "possible": ("#ff2020", "--", 1.5),
              "model": ("#111111", "-", 0.8)}
_DOT = {"marker": "o", "linestyle": "", "markersize": 5, "markerfacecolor": "white"}
LINK_LABELS = {"sure": "gold sure", "possible": "gold possible", "model": "attention links"}


@dataclass
class LinkSet:
    """Word links drawn one way over a heatmap: (source word i, target word j), 0-based
    whitespace words. ``kind``: "sure" (solid square), "possible" (dashed square) or
    "model" (a dot: links read off the attention)."""

    kind: str
    links: set[tuple[int, int]]
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in LINK_KINDS:
            raise ValueError(f"link kind {self.kind!r}: expected one of {', '.join(LINK_KINDS)}")
        self.links = {(int(i), int(j)) for i, j in self.links}
        self.label = self.label or LINK_LABELS[self.kind]


def gold_link_sets(sure: Iterable[tuple[int, int]], possible: Iterable[tuple[int, int]] = ()
                   ) -> list[LinkSet]:
    """A gold alignment as link sets: the sure links, and the possible ones that are not sure
    (a :class:`~attendo.diagnostics.GoldAlignment`'s ``possible`` includes its ``sure``)."""
    sure = set(sure)
    return [LinkSet("sure", sure), LinkSet("possible", set(possible) - sure)]


def alignment_groups(src_tokens: Sequence[str], tgt_tokens: Sequence[str],
                     kinds: tuple[str, str] | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token indices of each whitespace word of the source and of the output, by the
    tokenizers' ``kinds`` (:func:`attendo.diagnostics.word_groups`; a final ``</s>`` belongs
    to no word). ``kinds`` None: the tokens are the words."""
    if kinds is None:
        return [[k] for k in range(len(src_tokens))], [[k] for k in range(len(tgt_tokens))]
    tgt = list(tgt_tokens)
    if tgt and tgt[-1] == "</s>":
        tgt = tgt[:-1]
    return word_groups(list(src_tokens), kinds[0]), word_groups(tgt, kinds[1])


def link_cells(links: Iterable[tuple[int, int]], src_groups: Sequence[Sequence[int]],
               tgt_groups: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
    """Heatmap cells (row, column) = (output token, source token) of word links (source word
    i, target word j): every token of output word j against every token of source word i.
    A link outside the words is a ValueError."""
    cells: set[tuple[int, int]] = set()
    for i, j in links:
        if not (0 <= i < len(src_groups) and 0 <= j < len(tgt_groups)):
            raise ValueError(f"link {i}-{j} is outside the sentence pair ({len(src_groups)} "
                             f"source words, {len(tgt_groups)} output words; 0-based)")
        cells.update((r, c) for r in tgt_groups[j] for c in src_groups[i])
    return cells


def alignment_cells(alignment: Sequence[LinkSet], src_tokens: Sequence[str],
                    tgt_tokens: Sequence[str], kinds: tuple[str, str] | None = None,
                    merge: bool = False) -> list[tuple[LinkSet, set[tuple[int, int]]]]:
    """Each link set with its cells on the heatmap of ``src_tokens`` x ``tgt_tokens`` (pieces;
    merged into words as :func:`merge_subwords` does when ``merge``: a merged cell is marked
    when any of its pieces' cells is)."""
    sg, tg = alignment_groups(src_tokens, tgt_tokens, kinds)
    out = [(ls, link_cells(ls.links, sg, tg)) for ls in alignment]
    if merge:
        row_of = {p: k for k, g in enumerate(merge_subwords(tgt_tokens)[1]) for p in g}
        col_of = {p: k for k, g in enumerate(merge_subwords(src_tokens)[1]) for p in g}
        out = [(ls, {(row_of[r], col_of[c]) for r, c in cells}) for ls, cells in out]
    return out


def draw_alignment(ax, overlay: Sequence[tuple[LinkSet, set[tuple[int, int]]]]) -> list:
    """Markers on the heatmap in ``ax`` (imshow coordinates: cell (r, c) centred at x=c,
    y=r), one artist per cell: a solid square (sure), a dashed square inside the cell
    (possible), a dot (model). Returns the artists."""
    from matplotlib.patches import Rectangle

    artists = []
    for ls, cells in overlay:
        color, style, width = LINK_STYLE[ls.kind]
        for r, c in sorted(cells):
            if ls.kind == "model":  # a marker in points: round whatever the cells' aspect
                (a,) = ax.plot([c], [r], **_DOT, markeredgecolor=color, markeredgewidth=width)
            else:
                h = 0.5 if ls.kind == "sure" else 0.34  # possible: inset, inside a sure square
                a = Rectangle((c - h, r - h), 2 * h, 2 * h, fill=False, edgecolor=color,
                              linestyle=style, linewidth=width, clip_on=False)
                ax.add_patch(a)
            artists.append(a)
    return artists


def _link_legend(fig, overlay: Sequence[tuple[LinkSet, set]]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for ls, _ in overlay:
        color, style, width = LINK_STYLE[ls.kind]
        handles.append(
            Line2D([], [], **_DOT, markeredgecolor=color, markeredgewidth=width, label=ls.label)
            if ls.kind == "model" else
            Patch(fill=False, edgecolor=color, linestyle=style, linewidth=width, label=ls.label))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   fontsize=7, frameon=False)


def heatmap_figsize(n_src: int, n_tgt: int, n_strips: int = 0,
                    coverage: bool = False) -> tuple[float, float]:
    """Inches (width, height) of :func:`plot_attention`'s figure."""
    w = max(4.0, 0.45 * n_src + 2.0) + 0.5 * n_strips
    h = max(3.0, 0.4 * n_tgt + 1.5) + (0.5 if coverage else 0.0)
    return round(w, 2), round(h, 2)


def grid_figsize(n_rows_tok: int, n_cols_tok: int, layers: int, heads: int) -> tuple[float, float]:
    """Inches (width, height) of :func:`plot_attention_grid`'s figure: a panel per layer/head."""
    pw = max(2.2, 0.22 * n_cols_tok + 1.0)
    ph = max(2.0, 0.2 * n_rows_tok + 1.0)
    return round(heads * pw + 0.8, 2), round(layers * ph + 0.6, 2)


def _save(fig, path: str | Path, dpi: int) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # no bbox_inches="tight": the size is figsize * dpi
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _check(m: np.ndarray, rows: Sequence[str], cols: Sequence[str], what: str) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    if m.shape[-2:] != (len(rows), len(cols)):
        raise ValueError(f"{what} shape {m.shape} does not match {len(rows)} rows x "
                         f"{len(cols)} columns of tokens")
    return m


def plot_attention(attn: np.ndarray, src_tokens: list[str], tgt_tokens: list[str],
                   path: str | Path, title: str = "", merge: bool = False, dpi: int = 100,
                   strips: dict[str, np.ndarray] | None = None,
                   coverage: np.ndarray | None = None, row_name: str = "output",
                   col_name: str = "source", alignment: Sequence[LinkSet] | None = None,
                   kinds: tuple[str, str] | None = None) -> Path:
    """Write a PNG heatmap of attn (len(tgt_tokens), len(src_tokens)); returns the path.

    strips: per-output-token values in [0, 1], e.g. {"p_gen": (T,)}, drawn as columns right of
    the heatmap with their values written in. coverage: (T, S) coverage before each step (or
    None); the strip below the heatmap is the coverage after the last step, coverage[-1] +
    attn[-1], i.e. how much attention each source token received in total.
    alignment: word links drawn over the cells, with a legend below (see :class:`LinkSet`);
    kinds: the (source, target) tokenizer kinds that group the tokens into words
    (``"bpe"``, ``"char"``, ...; None: the tokens are the words).
    """
    attn = _check(attn, tgt_tokens, src_tokens, "attention")
    overlay = [(ls, cells) for ls, cells in
               alignment_cells(alignment or (), src_tokens, tgt_tokens, kinds, merge) if cells]
    strips = {k: np.asarray(v, dtype=float).reshape(-1) for k, v in (strips or {}).items()}
    for k, v in strips.items():
        if len(v) != len(tgt_tokens):
            raise ValueError(f"{k}: {len(v)} values for {len(tgt_tokens)} output tokens")
    total = None
    if coverage is not None:
        cov = _check(np.asarray(coverage)[:, : len(src_tokens)], tgt_tokens, src_tokens, "coverage")
        total = cov[-1] + attn[-1] if len(cov) else np.zeros(len(src_tokens))
    if merge:
        src_tokens, src_groups = merge_subwords(src_tokens)
        tgt_tokens, tgt_groups = merge_subwords(tgt_tokens)
        attn = merge_matrix(attn, tgt_groups, src_groups)
        strips = {k: np.array([v[g].mean() for g in tgt_groups]) for k, v in strips.items()}
        if total is not None:
            total = np.array([total[g].sum() for g in src_groups])
    S, T = len(src_tokens), len(tgt_tokens)
    w, h = heatmap_figsize(S, T, len(strips), total is not None)
    fig = plt.figure(figsize=(w, h), dpi=dpi, layout="constrained")
    gs = fig.add_gridspec(
        2 if total is not None else 1, 1 + len(strips),
        width_ratios=[max(S, 1)] + [1.1] * len(strips),
        height_ratios=[max(T, 1), 1.1] if total is not None else [1],
    )
    ax = fig.add_subplot(gs[0, 0])
    im = ax.imshow(attn, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    if overlay:
        draw_alignment(ax, overlay)
        _link_legend(fig, overlay)
    ax.set_yticks(range(T), labels=tgt_tokens)
    ax.set_ylabel(row_name)
    if total is None:
        ax.set_xticks(range(S), labels=src_tokens, rotation=60, ha="right")
        ax.set_xlabel(col_name)
    else:
        ax.set_xticks(range(S), labels=[])
        cax = fig.add_subplot(gs[1, 0], sharex=ax)
        vmax = max(1.0, float(total.max()) if total.size else 1.0)
        cax.imshow(total[None, :], cmap="magma", vmin=0.0, vmax=vmax, aspect="auto")
        for j, v in enumerate(total):
            cax.text(j, 0, f"{v:.1f}", ha="center", va="center", fontsize=7,
                     color="white" if v < 0.6 * vmax else "black")
        cax.set_yticks([0], labels=["coverage"])
        cax.set_xticks(range(S), labels=src_tokens, rotation=60, ha="right")
        cax.set_xlabel(col_name)
    top = [ax]
    for c, (name, v) in enumerate(strips.items(), start=1):
        sax = fig.add_subplot(gs[0, c], sharey=ax)
        top.append(sax)
        sax.imshow(v[:, None], cmap="cividis", vmin=0.0, vmax=1.0, aspect="auto")
        for i, x in enumerate(v):
            sax.text(0, i, f"{x:.2f}", ha="center", va="center", fontsize=7,
                     color="white" if x < 0.6 else "black")
        sax.set_xticks([0], labels=[name], rotation=60, ha="right")
        sax.tick_params(axis="y", labelleft=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=top, fraction=0.04)
    return _save(fig, path, dpi)


def plot_attention_grid(weights: np.ndarray, row_tokens: list[str], col_tokens: list[str],
                        path: str | Path, title: str = "", merge: bool = False, dpi: int = 100,
                        layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                        row_name: str = "output", col_name: str = "source") -> Path:
    """Write one PNG with a heatmap per layer (rows of panels) and head (columns of panels).

    weights: (L, H, R, C), e.g. cross-attention (L, H, T, S) or encoder self-attention
    (L, H, S, S). layers / heads: the indices the L and H axes stand for (for the panel
    titles, when the caller passes a selection); default 0..L-1 and 0..H-1.
    """
    weights = _check(weights, row_tokens, col_tokens, "attention")
    if weights.ndim != 4:
        raise ValueError(f"expected (layers, heads, rows, columns) weights, got {weights.shape}")
    if merge:
        row_tokens, row_groups = merge_subwords(row_tokens)
        col_tokens, col_groups = merge_subwords(col_tokens)
        weights = merge_matrix(weights, row_groups, col_groups)
    L, H, R, C = weights.shape
    layers = list(range(L)) if layers is None else list(layers)
    heads = list(range(H)) if heads is None else list(heads)
    fig, axes = plt.subplots(L, H, figsize=grid_figsize(R, C, L, H), dpi=dpi,
                             layout="constrained", squeeze=False)
    im = None
    small = 7 if max(R, C) <= 20 else 5
    for li in range(L):
        for hi in range(H):
            ax = axes[li, hi]
            im = ax.imshow(weights[li, hi], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"layer {layers[li]} head {heads[hi]}", fontsize=8)
            ax.set_xticks(range(C), labels=col_tokens if li == L - 1 else [], rotation=75,
                          ha="right", fontsize=small)
            ax.set_yticks(range(R), labels=row_tokens if hi == 0 else [], fontsize=small)
    axes[-1, 0].set_xlabel(col_name)
    axes[-1, 0].set_ylabel(row_name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.02)
    return _save(fig, path, dpi)


def select_heads(weights: np.ndarray, layer: int | None = None, head: int | None = None
                 ) -> tuple[np.ndarray, list[int], list[int]]:
    """weights (L, H, R, C) -> the chosen layer and/or head (L', H', R, C) and their indices.
    None keeps all; negative counts from the end (-1: the last layer)."""
    L, H = weights.shape[:2]
    layers, heads = list(range(L)), list(range(H))
    if layer is not None:
        if not -L <= layer < L:
            raise UsageError(f"--layer {layer}: the model has {L} layers (0..{L - 1}, or -1 for the last)")
        layers = [layer % L]
    if head is not None:
        if not -H <= head < H:
            raise UsageError(f"--head {head}: the model has {H} heads (0..{H - 1}, or -1 for the last)")
        heads = [head % H]
    return weights[np.ix_(layers, heads)], layers, heads


def _plot_heads(weights, rows, cols, stem: Path, what: str, layer, head, title, merge, dpi,
                row_name: str, col_name: str) -> Path:
    w, layers, heads = select_heads(np.asarray(weights, dtype=float), layer, head)
    if len(layers) == 1 and len(heads) == 1:
        name = f"{stem.name}-{what}-L{layers[0]}H{heads[0]}.png"
        return plot_attention(w[0, 0], cols, rows, stem.with_name(name),
                              title=f"{title} [{what} layer {layers[0]} head {heads[0]}]",
                              merge=merge, dpi=dpi, row_name=row_name, col_name=col_name)
    suffix = f"-L{layers[0]}" if layer is not None else f"-H{heads[0]}" if head is not None else ""
    return plot_attention_grid(w, rows, cols, stem.with_name(f"{stem.name}-{what}{suffix}.png"),
                               title=f"{title} [{what}-attention]", merge=merge, dpi=dpi,
                               layers=layers, heads=heads, row_name=row_name, col_name=col_name)


def draw_translation(t, out_dir: str | Path, stem: str, title: str = "", merge: bool = False,
                     layer: int | None = None, head: int | None = None,
                     self_attention: np.ndarray | None = None, dpi: int = 100,
                     alignment: Sequence[LinkSet] | None = None,
                     kinds: tuple[str, str] | None = None) -> list[Path]:
    """Every picture of one translation (a :class:`~attendo.translator.Translation` with
    attention), named after stem in out_dir:

    - ``STEM.png``: the attention, with a strip per per-token value the model returned
      (e.g. p_gen) and the coverage strip when it returned coverage, and the word links of
      ``alignment`` drawn over it (words of ``t.src_tokens`` and ``t.tgt_tokens`` grouped by
      the tokenizer ``kinds``, see :func:`plot_attention`);
    - ``STEM-cross.png``: a Transformer decoder's cross-attention, every layer and head (or
      ``-cross-L{l}.png`` / ``-cross-H{h}.png`` / ``-cross-L{l}H{h}.png`` for a chosen one);
    - ``STEM-self.png``: a Transformer encoder's self-attention, the same way.
    """
    stem_path = Path(out_dir) / stem
    src, tgt = list(t.src_tokens), list(t.tgt_tokens)
    info = {k: np.asarray(v) for k, v in (t.info or {}).items()}
    strips = {k: v[: len(tgt)] for k, v in info.items() if v.ndim == 1}
    cov = info.get("coverage")
    paths = [plot_attention(t.attention, src, tgt, stem_path.with_name(f"{stem}.png"), title,
                            merge, dpi, strips=strips,
                            coverage=None if cov is None else cov[: len(tgt), : len(src)],
                            alignment=alignment, kinds=kinds)]
    heads = info.get("attn_heads")  # (T, L, H, S)
    if heads is None and self_attention is None and (layer is not None or head is not None):
        raise UsageError("--layer/--head pick a Transformer's attention heads; this model has none")
    if heads is not None:
        w = heads[: len(tgt), ..., : len(src)].transpose(1, 2, 0, 3)  # (L, H, T, S)
        paths.append(_plot_heads(w, tgt, src, stem_path, "cross", layer, head, title, merge, dpi,
                                 "output", "source"))
    if self_attention is not None:
        paths.append(_plot_heads(self_attention, src, src, stem_path, "self", layer, head, title,
                                 merge, dpi, "query", "key"))
    return paths


def plot_image_attention(pixels: np.ndarray, attn: np.ndarray, grid: tuple[int, int],
                         tgt_tokens: Sequence[str], path: str | Path, title: str = "",
                         dpi: int = 100, per_row: int = 6) -> Path:
    """Show, Attend and Tell's picture: one panel per output token, the image (C, H, W) with
    the token's attention over its regions laid on top (brighter = more weight). ``attn``
    (len(tgt_tokens), rows * cols) is in the encoder's order, column by column (see
    :mod:`attendo.model.image`); ``grid`` = (rows, cols) of the region grid."""
    rows, cols = grid
    attn = np.asarray(attn, dtype=float)
    if attn.shape != (len(tgt_tokens), rows * cols):
        raise ValueError(f"attention shape {attn.shape} does not match {len(tgt_tokens)} "
                         f"tokens x {rows}x{cols} regions")
    img = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # (H, W[, C])
    H, W = img.shape[:2]
    n = len(tgt_tokens)
    nr, nc = -(-n // per_row), min(n, per_row)
    panel_w = min(4.0, max(1.2, 1.6 * W / max(H, 1) / 2))
    fig, axes = plt.subplots(nr, nc, figsize=(nc * panel_w + 0.4, nr * (panel_w * H / W + 0.5)
                                               + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        a = attn[k].reshape(cols, rows).T  # (rows, cols): region (r, c)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, extent=(0, W, H, 0))
        ax.imshow(a, cmap="inferno", alpha=0.6, interpolation="bilinear", extent=(0, W, H, 0),
                  vmin=0, vmax=a.max() or 1)
        ax.set_title(tgt_tokens[k], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi)
