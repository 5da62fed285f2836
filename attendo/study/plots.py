"""A study's plots: BLEU and diagnostics by variant, rare words, one attention heatmap each."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write_bytes
from .spec import Study


def diag(r: dict) -> dict:
    """A variant result's diagnostics ({} when it has none)."""
    return r["report"].get("diagnostics", {})


def plot_report(study: Study, results: list[dict], same: dict[str, dict] | None = None
                ) -> dict[str, Any]:
    from .. import viz  # noqa: F401  (selects the Agg backend before pyplot is imported)

    rd, d0 = study.report_dir, diag(results[0])
    names = [r["name"] for r in results]
    out: dict[str, Any] = {"heatmaps": {}}
    if not d0 or "bleu_by_length" not in d0:  # an image study draws its own (report.py)
        return out
    out["length"] = _plot_lines(
        rd / "bleu_by_length.png", names,
        [f"{b['bucket']}\n(n={b['sentences']})" for b in d0["bleu_by_length"]],
        [[b["bleu"] for b in diag(r)["bleu_by_length"]] for r in results],
        "BLEU by source length (words)", "BLEU")
    ref = d0["repetition"]["reference"]
    out["repetition"] = _plot_lines(
        rd / "repetition.png", names, [f"n={n}" for n in ref],
        [list(diag(r)["repetition"]["output"].values()) for r in results],
        "Duplicate n-grams within each output", "% of n-grams", reference=list(ref.values()))
    out["rare"] = _plot_rare(rd / "rare_words.png", results, same)
    for r in results:
        pic = _plot_heatmap(rd / f"attention-{r['name']}.png", r)
        if pic:
            out["heatmaps"][r["name"]] = pic
    return out


def plot_by_length(study: Study, results: list[dict], lengths: list[int]) -> str:
    """CER by the reference's length, one line per variant (an image study)."""
    def cer(r: dict) -> list:
        rows = {g["length"]: g["cer"] for g in r["report"]["by_length"]}
        return [rows.get(n) for n in lengths]

    return _plot_lines(study.report_dir / "cer_by_length.png", [r["name"] for r in results],
                       [str(n) for n in lengths], [cer(r) for r in results],
                       "Character error rate by length", "CER %")


def _nan(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _plot_lines(path: Path, names: list[str], xlabels: list[str], ys: list[list],
                title: str, ylabel: str, reference: list | None = None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(xlabels) + 3), 4.2), dpi=100)
    x = np.arange(len(xlabels))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for k, (name, y) in enumerate(zip(names, ys)):
        ax.plot(x, _nan(y), marker="o", label=name, color=colors(k % colors.N))
    if reference is not None:
        ax.plot(x, _nan(reference), color="black", linestyle="--", linewidth=2, marker="s",
                label="reference")
    ax.set_xticks(x, labels=xlabels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def _plot_rare(path: Path, results: list[dict], same: dict[str, dict] | None = None) -> str:
    """Reproduction by class; with ``same`` (:func:`words_by_first_classes`), the same words
    for every variant, classed as the first variant reads them."""
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    if same and all(n in same for n in names):
        rw, whose = [same[n] for n in names], f" (as '{names[0]}' reads them)"
    else:
        rw, whose = [diag(r)["rare_words"] for r in results], ""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(names) + 5), 4.2), dpi=100)
    x = np.arange(len(names))
    classes = [(c, label) for c, label in (("oov", "OOV"), ("rare", "rare"), ("split", "split"))
               if rw[0][c]["in_ref"]]  # a class with no word in the references has no bar
    width = 0.8 / max(len(classes), 1)
    for k, (cls, label) in enumerate(classes):
        a1.bar(x + (k - (len(classes) - 1) / 2) * width, _nan([w[cls]["share"] for w in rw]),
               width=width, label=f"{label}{whose} (n={rw[0][cls]['in_ref']} in the references)")
    a1.set_xticks(x, labels=names, rotation=45, ha="right")
    a1.set_ylim(0, 100)
    a1.set_ylabel("% reproduced in the output")
    a1.set_title("Rare/unknown source words found in the reference")
    if classes:
        a1.legend(fontsize=8)
    else:
        a1.text(0.5, 0.5, "no such word in the references", ha="center", transform=a1.transAxes)
    unk = _nan([diag(r)["unk_rate"] for r in results])
    a2.bar(x, unk, color="gray")
    a2.set_ylim(0, max([1.0] + [u * 1.1 for u in unk if not np.isnan(u)]))
    a2.set_xticks(x, labels=names, rotation=45, ha="right")
    a2.set_ylabel("% of output tokens")
    a2.set_title("<unk> in the output")
    return _save(fig, path)


def _plot_heatmap(path: Path, r: dict) -> str | None:
    from ..viz import plot_attention

    h = r["heatmap"]
    if h["attention"] is None or not h["tgt_tokens"]:
        return None
    kw: dict[str, Any] = {}
    if "p_gen" in h:
        kw["strips"] = {"p_gen": np.array(h["p_gen"])}
    if "coverage" in h:
        kw["coverage"] = np.array(h["coverage"])
    title = f"{r['name']}: {h['hyp']}"
    plot_attention(np.array(h["attention"]), h["src_tokens"], h["tgt_tokens"], path,
                   title=title if len(title) < 90 else title[:87] + "...", merge=True, **kw)
    return path.name


def _save(fig, path: Path) -> str:
    """Lay out, write as PNG (atomically) and close a figure; returns the file's name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name
