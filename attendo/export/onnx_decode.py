"""Greedy and beam search over an exported ``encoder.onnx`` + ``decoder_step.onnx``, in numpy
and onnxruntime only (a reference loop, so an ONNX export is usable, not just written).

The search follows :mod:`attendo.search` (same output caps, same beam rules: the 2k best
continuations per sentence, EOS among the top k finishes, GNMT length penalty, exact early
stop), so in fp32 it gives attendo's outputs. Use::

    from attendo.export.onnx_decode import OnnxTranslator
    t = OnnxTranslator("model_onnx", threads=2)
    t.translate(["Ein Hund läuft."], beam=5)          # text in, text out (needs attendo's
                                                       # tokenizer files, copied beside)
    t.translate_ids([[17, 5, 98]], beam=1)            # ids in, ids out (numpy + onnxruntime)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .onnx_graphs import META_FILE


def _lp(length, alpha: float):
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


class OnnxTranslator:
    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = json.loads((self.path / META_FILE).read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = providers or ["CPUExecutionProvider"]
        self.encoder, self.step = (ort.InferenceSession(str(self.path / name), opts,
                                                        providers=providers)
                                   for name in ("encoder.onnx", "decoder_step.onnx"))
        self.step_inputs = {i.name for i in self.step.get_inputs()}
        self.step_outputs = [o.name for o in self.step.get_outputs()]
        self.bos, self.eos = self.meta["bos"], self.meta["eos"]
        self._codecs = None

    # -- text ------------------------------------------------------------------------------
    def codecs(self):
        """attendo's source and target codecs from the tokenizer files beside the graphs."""
        if self._codecs is None:
            from attendo.data.prepare import load_codecs

            self._codecs = load_codecs(self.path, self.meta.get("lowercase", False))
        return self._codecs

    def translate(self, texts: list[str], beam: int | None = None, batch_size: int | None = None,
                  length_penalty: float | None = None) -> list[str]:
        """Texts are checked and cleaned as attendo's Translator does (a BOM and surrounding
        whitespace dropped; a control character is a ``TextError``)."""
        from attendo.data.corpus import clean_texts

        src, tgt = self.codecs()
        texts = clean_texts(texts, "texts")
        ids = [src.encode(t)[: self.meta["decode"]["max_input_tokens"]] for t in texts]
        return [tgt.decode(o) for o in self.translate_ids(ids, beam, batch_size, length_penalty)]

    # -- ids -------------------------------------------------------------------------------
    def caps(self, lens: list[int]) -> list[int]:
        """attendo's output caps: int(ratio * source length + 10), at most decode.max_len."""
        d = self.meta["decode"]
        return [min(int(np.float32(n) * np.float32(d["max_len_ratio"]) + 10), d["max_len"])
                for n in lens]

    def translate_ids(self, ids: list[list[int]], beam: int | None = None,
                      batch_size: int | None = None, length_penalty: float | None = None
                      ) -> list[list[int]]:
        """Source ids -> output ids (without EOS), batched by length like attendo."""
        d = self.meta["decode"]
        beam = d["beam_size"] if beam is None else beam
        alpha = d["length_penalty"] if length_penalty is None else length_penalty
        batch_size = batch_size or d["batch_size"]
        out: list[list[int]] = [[] for _ in ids]
        todo = sorted((i for i, x in enumerate(ids) if x), key=lambda i: len(ids[i]))
        for k in range(0, len(todo), batch_size):
            rows = todo[k : k + batch_size]
            hyps = self.search([ids[i] for i in rows], beam, alpha)
            for i, h in zip(rows, hyps):
                out[i] = h[:-1] if h and h[-1] == self.eos else h
        return out

    def start(self, batch: list[list[int]]) -> tuple[dict, dict]:
        """Run the encoder: (per-source state, recurrent state) as dicts of arrays."""
        lens = np.array([len(x) for x in batch], dtype=np.int64)
        src = np.zeros((len(batch), int(lens.max())), dtype=np.int64)
        for b, x in enumerate(batch):
            src[b, : len(x)] = x
        names = [o.name for o in self.encoder.get_outputs()]
        got = dict(zip(names, self.encoder.run(None, {"src": src, "src_lens": lens})))
        source = {n: got[n] for n in self.meta["per_source"] if n in self.step_inputs}
        if self.meta["decoder"] == "transformer":
            H, d = self.meta["empty_cache"]
            empty = np.zeros((len(batch), H, 0, d), dtype=np.float32)
            recurrent = {n: empty for n in self.meta["recurrent"]}
        else:
            recurrent = {n: got[n] for n in self.meta["recurrent"]}
        return source, recurrent

    def _step(self, y: np.ndarray, t: int, source: dict, recurrent: dict
              ) -> tuple[np.ndarray, dict]:
        feed = {n: v for n, v in recurrent.items() if n in self.step_inputs}  # some go unread
        feed.update(source, y_prev=y)
        if "step" in self.step_inputs:
            feed["step"] = np.array(t, dtype=np.int64)
        res = dict(zip(self.step_outputs, self.step.run(None, feed)))
        return res["log_probs"], {n: res[f"new_{n}"] for n in recurrent}

    def search(self, batch: list[list[int]], beam: int = 1, alpha: float = 0.0) -> list[list[int]]:
        """Best output ids of each source (ending with EOS unless cut at its cap)."""
        caps = self.caps([len(x) for x in batch])
        source, recurrent = self.start(batch)
        if beam == 1:
            return self._greedy(source, recurrent, caps)
        return self._beam(source, recurrent, caps, beam, alpha)

    def _greedy(self, source: dict, recurrent: dict, caps: list[int]) -> list[list[int]]:
        B = len(caps)
        alive = list(range(B))
        y = np.full(B, self.bos, dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(B)]  # every sentence ends by its cap
        for t in range(max(caps)):
            lp, recurrent = self._step(y, t, source, recurrent)
            y = lp.argmax(-1).astype(np.int64)
            keep = []
            for r, s in enumerate(alive):
                out[s].append(int(y[r]))
                if y[r] != self.eos and t + 1 < caps[s]:
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):
                idx = np.array(keep)
                source = {n: v[idx] for n, v in source.items()}
                recurrent = {n: v[idx] for n, v in recurrent.items()}
                y, alive = y[idx], [alive[r] for r in keep]
        return out

    def _beam(self, source: dict, recurrent: dict, caps: list[int], k: int, alpha: float
              ) -> list[list[int]]:
        B = len(caps)
        rep = np.repeat(np.arange(B), k)  # row b * k + j: beam j of sentence b
        source = {n: v[rep] for n, v in source.items()}
        recurrent = {n: v[rep] for n, v in recurrent.items()}
        scores = np.full((B, k), -np.inf, dtype=np.float32)
        scores[:, 0] = 0.0  # only beam 0 starts alive, so the k copies do not tie
        y = np.full(B * k, self.bos, dtype=np.int64)
        hist = np.zeros((B * k, 0), dtype=np.int64)
        sent = list(range(B))
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        for t in range(max(caps)):
            lp, recurrent = self._step(y, t, source, recurrent)  # (n*k, V)
            n, V = len(sent), lp.shape[-1]
            cand = (lp.reshape(n, k, V) + scores[:, :, None]).reshape(n, k * V)
            m = min(2 * k, k * V)
            top_idx = np.argpartition(-cand, m - 1, axis=1)[:, :m]
            top_scores = np.take_along_axis(cand, top_idx, 1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            top_idx = np.take_along_axis(top_idx, order, 1)
            top_scores = np.take_along_axis(top_scores, order, 1)
            top_beam, top_tok = top_idx // V, top_idx % V
            is_eos = top_tok == self.eos
            src_rows = np.arange(n)[:, None] * k + top_beam  # (n, 2k)
            fin = is_eos[:, :k] & np.isfinite(top_scores[:, :k])
            for g, j in zip(*np.nonzero(fin)):
                toks = hist[src_rows[g, j]].tolist() + [self.eos]
                finished[sent[g]].append((float(top_scores[g, j]) / _lp(len(toks), alpha), toks))
            live = np.where(is_eos, -np.inf, top_scores)
            pick = np.argsort(-live, axis=1, kind="stable")[:, :k]  # (n, k)
            scores = np.take_along_axis(live, pick, 1)
            rows = np.take_along_axis(src_rows, pick, 1).reshape(-1)
            y = np.take_along_axis(top_tok, pick, 1).reshape(-1).astype(np.int64)
            hist = np.concatenate([hist[rows], y[:, None]], 1)
            recurrent = {name: v[rows] for name, v in recurrent.items()}
            done = []
            for g, s in enumerate(sent):
                best_fin = max((sc for sc, _ in finished[s]), default=-np.inf)
                if len(finished[s]) >= k or (
                    finished[s] and scores[g].max() / _lp(caps[s], alpha) <= best_fin
                ):
                    done.append(g)
                elif t + 1 >= caps[s]:
                    for b in range(k):
                        if np.isfinite(scores[g, b]):
                            toks = hist[g * k + b].tolist()
                            finished[s].append((float(scores[g, b]) / _lp(len(toks), alpha), toks))
                    done.append(g)
            if len(done) == n:
                break
            if done:
                keep = [g for g in range(n) if g not in set(done)]
                ridx = (np.array(keep)[:, None] * k + np.arange(k)).reshape(-1)
                source = {name: v[ridx] for name, v in source.items()}
                recurrent = {name: v[ridx] for name, v in recurrent.items()}
                y, hist, scores = y[ridx], hist[ridx], scores[keep]
                sent = [sent[g] for g in keep]
        return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
