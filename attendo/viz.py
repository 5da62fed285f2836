"""Pictures of attention: heatmaps of a_ij with output tokens down and source tokens across."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .utils import atomic_write_bytes  # noqa: E402


def merge_subwords(tokens: list[str]) -> tuple[list[str], list[list[int]]]:
    """Join sentencepiece pieces ("▁word", "piece") into words; returns words and the piece
    indices of each word."""
    words: list[str] = []
    groups: list[list[int]] = []
    for i, tok in enumerate(tokens):
        starts = tok.startswith("\u2581") or not words or tok in ("</s>", "<unk>")
        text = tok.lstrip("\u2581")
        if starts or words[-1] == "</s>":
            words.append(text or tok)
            groups.append([i])
        else:
            words[-1] += text
            groups[-1].append(i)
    return words, groups


def merge_attention(attn: np.ndarray, src: list[str], tgt: list[str]):
    """Word-level attention: sum over a source word's pieces, mean over an output word's."""
    src_words, src_groups = merge_subwords(src)
    tgt_words, tgt_groups = merge_subwords(tgt)
    cols = np.stack([attn[:, g].sum(1) for g in src_groups], 1)  # (T, S_words)
    rows = np.stack([cols[g].mean(0) for g in tgt_groups], 0)  # (T_words, S_words)
    return rows, src_words, tgt_words


def plot_attention(
    attn: np.ndarray,
    src_tokens: list[str],
    tgt_tokens: list[str],
    path: str | Path,
    title: str = "",
    merge: bool = False,
    dpi: int = 100,
) -> Path:
    """Write a PNG heatmap of attn (len(tgt_tokens), len(src_tokens)); returns the path."""
    attn = np.asarray(attn, dtype=float)
    if attn.shape != (len(tgt_tokens), len(src_tokens)):
        raise ValueError(
            f"attention shape {attn.shape} does not match {len(tgt_tokens)} output x "
            f"{len(src_tokens)} source tokens"
        )
    if merge:
        attn, src_tokens, tgt_tokens = merge_attention(attn, src_tokens, tgt_tokens)
    w = max(4.0, 0.45 * len(src_tokens) + 2)
    h = max(3.0, 0.4 * len(tgt_tokens) + 1.5)
    fig, ax = plt.subplots(figsize=(w, h), dpi=dpi)
    im = ax.imshow(attn, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), labels=src_tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(tgt_tokens)), labels=tgt_tokens)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
