"""The ``attendo`` command line's options: every subcommand's arguments, names, defaults and
help texts (what each does is :mod:`attendo.cli`'s)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from . import __version__
from .align.names import METHODS, SOFT_SYMMETRIZE, SYMMETRIZE, WORD_RULES
from .errors import AttendoError


class CLIError(AttendoError):
    """A usage problem reported as 'attendo CMD: error: ...' with exit code 2."""


def check_output_path(path: str | None, flag: str) -> None:
    """Fail before any work when an output file given as ``flag`` is a directory."""
    if path and Path(path).is_dir():
        raise CLIError(f"{path}: is a directory, expected a file path for {flag}")


def check_decode_flags(args) -> None:
    """Numbers given on the command line for decoding, and an --output that is a directory,
    checked before the model loads."""
    check_output_path(getattr(args, "output", None), "--output")
    for flag in ("beam", "batch_size", "n_best"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    alpha = getattr(args, "length_penalty", None)
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise CLIError(
            f"--length-penalty must be a finite number >= 0 (GNMT alpha; 0 = off), got {alpha}"
        )


def check_n_best(n_best: int | None, beam: int | None, default_beam: int) -> None:
    beam = default_beam if beam is None else beam
    if n_best is not None and n_best > beam:
        raise CLIError(f"--n-best ({n_best}) must be <= the beam size ({beam}; set it with --beam)")


def build_parser(handlers: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The parser of every subcommand; ``handlers[name]`` (name as in ``cmd_align_prior``
    for align-prior) becomes ``args.func``."""
    p = argparse.ArgumentParser(
        prog="attendo",
        description="Attention-based sequence-to-sequence models: train, decode, evaluate, see.",
    )
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log debug messages too (default: info and above)")
    p.add_argument("--version", action="version", version=f"attendo {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small attention model on a generated task "
                                    "(trains 1-2.5 min)")
    d.add_argument("--out", default="runs/demo", help="model directory (default runs/demo)")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=500")
    d.set_defaults(func=handlers["demo"])

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=5e-4")
    t.add_argument("--out", help="model directory (sets train.out_dir)")
    t.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    t.add_argument("--overwrite", action="store_true", help="start over in a used out_dir")
    t.set_defaults(func=handlers["train"])

    def decode_args(q, ensemble: bool = False):
        if ensemble:
            q.add_argument("--model", required=True, nargs="+", metavar="DIR",
                           help="model directory; several: an ensemble (their probabilities "
                                "averaged at each step; one target vocabulary)")
        else:
            q.add_argument("--model", required=True, help="model directory")
        q.add_argument("--checkpoint", help="weights file (default MODEL/model.safetensors)")
        q.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy)")
        q.add_argument("--batch-size", type=int, default=None, help="sentences per batch")
        q.add_argument("--length-penalty", type=float, default=None, help="GNMT alpha")
        q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
        q.add_argument("overrides", nargs="*",
                       help="decode settings, e.g. decode.block_ngram_repeat=3 "
                            "decode.coverage_penalty=0.2")
        if ensemble:
            q.add_argument("--replace-unk", action="store_true",
                           help="write the attended source word for each <unk> (Luong et al. "
                                "2015)")
            q.add_argument("--unk-dict", metavar="FILE",
                           help="with --replace-unk: 'source target [prob]' lines; a dictionary "
                                "word replaces the attended one")
            q.add_argument("--input-format", choices=["text", "tsv", "jsonl"], default="text",
                           help="text: one source per line; tsv: 'source TAB prefix' (the output "
                                "starts with prefix); jsonl: {\"src\": ..., \"prefix\": ..., "
                                "\"constraints\": [words or phrases the output must contain]}")
            q.add_argument("--sample", action="store_true",
                           help="draw outputs instead of searching (see --temperature, --top-k, "
                                "--top-p, --n-samples, --seed)")
            q.add_argument("--temperature", type=float, default=1.0,
                           help="sampling temperature")
            q.add_argument("--top-k", type=int, default=0,
                           help="sample from the k most probable tokens (0: all)")
            q.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: from the "
                           "smallest set of tokens whose probability reaches p (1: all)")
            q.add_argument("--n-samples", type=int, default=1,
                           help="samples per sentence (translate prints them as with --n-best)")
            q.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same "
                           "input and batch size: same samples)")

    tr = sub.add_parser("translate", help="translate stdin to stdout, or --input/--output")
    decode_args(tr, ensemble=True)
    tr.add_argument("--input", "-i", help="input file (default stdin); for an image model, "
                    "one image path per line")
    tr.add_argument("--image", nargs="+", metavar="FILE", help="image model: these images")
    tr.add_argument("--output", "-o", help="output file (default stdout)")
    tr.add_argument("--n-best", type=int, default=1, help="print N best as 'i ||| text ||| score'")
    tr.set_defaults(func=handlers["translate"])

    sc = sub.add_parser("score", help="log-probabilities of given translations (forced "
                        "decoding, teacher-forced like the training loss)")
    sc.add_argument("--model", required=True, help="model directory")
    sc.add_argument("--checkpoint", help="weights file (default MODEL/model.safetensors)")
    sc.add_argument("--src", required=True, help="source sentences, one per line (- for "
                    "stdin); for an image model, one image path per line")
    sc.add_argument("--tgt", required=True, help="translations to score, line by line with --src")
    sc.add_argument("--output", "-o", help="output file (default stdout)")
    sc.add_argument("--json", action="store_true",
                    help="one JSON object per pair (src_tokens, tgt_tokens, token_log_probs, "
                         "log_prob) instead of '<log_prob> TAB <tokens>' lines")
    sc.add_argument("--batch-size", type=int, default=None,
                    help="pairs per batch (default decode.batch_size)")
    sc.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    sc.add_argument("overrides", nargs="*", help="decode settings, e.g. "
                    "decode.max_input_tokens=200 (sources are cut there, as for translation)")
    sc.set_defaults(func=handlers["score"])

    e = sub.add_parser("evaluate", help="BLEU, chrF, perplexity and diagnostics on a test set")
    decode_args(e, ensemble=True)
    e.add_argument("--src", required=True, help="source file; for an image model, a list of "
                   "image<TAB>text lines (as in training)")
    e.add_argument("--ref", help="reference file, line by line with --src (text models)")
    e.add_argument("--output", "-o", help="also write the hypotheses here")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--no-diagnostics", action="store_true",
                   help="only BLEU, chrF and perplexity (no length/repetition/rare/attention)")
    e.add_argument("--align-gold", metavar="FILE",
                   help="gold word alignments, one line per sentence: 'i-j' sure, 'i?j' possible "
                        "(0-based source-reference word indices); adds AER")
    e.add_argument("--align-method", choices=list(METHODS), default="argmax",
                   help="links from attention (see attendo align): each reference piece's most "
                        "attended source piece, every weight >= --align-threshold, or either "
                        "one step later (shift, shift-threshold)")
    e.add_argument("--align-threshold", type=float, default=0.5,
                   help="--align-method threshold: the least attention weight of a link")
    e.add_argument("--rare-max-count", type=int, default=5,
                   help="a source word seen at most this many times in training is rare (5)")
    e.set_defaults(func=handlers["evaluate"])

    al = sub.add_parser("align", help="word alignments from attention, in Pharaoh format")
    al.add_argument("--model", required=True, help="model directory (source -> target)")
    al.add_argument("--src", required=True, help="source sentences, one per line")
    al.add_argument("--tgt", help="target sentences to align with (teacher forcing)")
    al.add_argument("--translate", action="store_true",
                    help="align the model's own translations instead of --tgt")
    al.add_argument("--hyp-output", metavar="FILE", help="with --translate: write them here")
    al.add_argument("--output", "-o", help="links file, 'i-j' 0-based (default stdout)")
    al.add_argument("--method", choices=list(METHODS), default="argmax",
                    help="each target piece's most attended source piece; every weight >= "
                         "--threshold; or either one step later (shift, shift-threshold; "
                         "Chen et al. 2020)")
    al.add_argument("--threshold", type=float, default=0.5,
                    help="methods threshold and shift-threshold: the least weight of a link")
    al.add_argument("--words", choices=list(WORD_RULES), default="any",
                    help="pieces to words: any (words linked when any of their pieces are) or "
                         "mean (the method applied to word weights: summed over source pieces, "
                         "averaged over target pieces)")
    al.add_argument("--layer", type=int, default=None,
                    help="Transformer: cross-attention layer (0-based, -1 = last; default "
                         "model.attn_layer)")
    al.add_argument("--head", type=int, default=None,
                    help="Transformer: one head (default: the mean of the heads)")
    al.add_argument("--reverse-model", metavar="DIR",
                    help="a target -> source model, for --symmetrize (default grow-diag); "
                         "it is read with the same --method, --threshold, --layer, --head")
    al.add_argument("--symmetrize", choices=list(SYMMETRIZE + SOFT_SYMMETRIZE),
                    help="combine the two directions' links (intersect, union, grow-diag, "
                         "grow-diag-final; Koehn et al. 2003) or, with --words mean, average "
                         "their word weights before the method picks links (average)")
    al.add_argument("--gold", metavar="FILE", help="gold links: print AER, precision, recall")
    al.add_argument("--gold-format", choices=["pharaoh", "talp"], default="pharaoh",
                    help="pharaoh: 0-based, 'i?j' possible; talp: 1-based, 'ipj' possible")
    al.add_argument("--beam", type=int, default=None, help="with --translate: beam size")
    al.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    al.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    al.set_defaults(func=handlers["align"])

    ap = sub.add_parser("align-prior", help="eflomal word links of a training corpus (for "
                        "train.guided_alignment.file; needs attendo[align])")
    ap.add_argument("--src", required=True, help="source sentences, one per line")
    ap.add_argument("--tgt", required=True, help="target sentences, one per line")
    ap.add_argument("--output", "-o", required=True,
                    help="links file: grow-diag symmetrised, Pharaoh 'i-j' 0-based")
    ap.add_argument("--lowercase", action="store_true", help="lowercase before aligning")
    ap.set_defaults(func=handlers["align_prior"])

    a = sub.add_parser("attend", help="attention heatmaps (PNG) and the HTML explorer")
    a.add_argument("--model", required=True, help="model directory")
    a.add_argument("sentences", nargs="*",
                   help="source sentences to draw (or --src FILE, or stdin)")
    a.add_argument("--input", "-i", help="file of sentences")
    a.add_argument("--out", default=None,
                   help="folder for PNGs (default ./attention; with --html, PNGs only if given)")
    a.add_argument("--html", metavar="FILE",
                   help="write the interactive explorer of all sentences as one HTML file")
    a.add_argument("--beam", type=int, default=None,
                   help="beam size (default: the model's decode.beam_size)")
    a.add_argument("--n-best", type=int, default=None,
                   help="hypotheses kept per sentence (default: min(beam, 5) with --html, else 1)")
    a.add_argument("--layer", type=int, default=None,
                   help="Transformer: draw only this layer (0-based, -1 = last)")
    a.add_argument("--head", type=int, default=None,
                   help="Transformer: draw only this head (0-based, -1 = last)")
    a.add_argument("--merge-subwords", action="store_true", help="label words, not pieces")
    a.add_argument("--tgt", metavar="FILE",
                   help="target sentences, one per input sentence: draw the attention "
                        "teacher-forced on them instead of translating")
    a.add_argument("--align-gold", metavar="FILE",
                   help="gold word links to draw over the heatmap, one line per sentence "
                        "(needs --tgt): sure as solid squares, possible as dashed squares")
    a.add_argument("--gold-format", choices=["pharaoh", "talp"], default="pharaoh",
                   help="pharaoh: 0-based, 'i?j' possible; talp: 1-based, 'ipj' possible")
    a.add_argument("--show-alignment", choices=list(METHODS), default=None,
                   help="draw the word links read off the attention as dots (see attendo align)")
    a.add_argument("--align-threshold", type=float, default=0.5,
                   help="weight for --show-alignment threshold (default 0.5)")
    a.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
    a.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    a.set_defaults(func=handlers["attend"])

    sv = sub.add_parser("serve", help="HTTP translation server with the live explorer page")
    sv.add_argument("--model", required=True, nargs="+", metavar="DIR",
                    help="model directory; several: an ensemble (their probabilities "
                         "averaged at each step; one target vocabulary)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    sv.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    sv.add_argument("--max-batch", type=int, default=32,
                    help="sentences merged into one translator call (1 = no batching)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long the first request waits for others to join its batch")
    sv.add_argument("--max-sentences", type=int, default=64, help="sentences per request")
    sv.add_argument("--max-chars", type=int, default=2000, help="characters per sentence")
    sv.add_argument("--max-tokens", type=int, default=256, help="source pieces per sentence")
    sv.add_argument("--max-beam", type=int, default=10,
                    help="beam size, and samples per sentence (sampling.n)")
    sv.add_argument("--unk-dict", metavar="FILE", help="the dictionary of requests with "
                    "\"replace_unk\": 'source target [prob]' lines")
    sv.add_argument("--max-constraints", type=int, default=16,
                    help="lexical constraints per sentence")
    sv.add_argument("--max-body-kb", type=int, default=256, help="request body size")
    sv.add_argument("--max-image-kb", type=int, default=4096,
                    help="image models: size of one image file (413 over it)")
    sv.add_argument("--max-image-pixels", type=int, default=16_000_000,
                    help="image models: width x height of one image, read from its header "
                         "before decoding (413 over it: a decompression bomb)")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    sv.add_argument("--read-timeout", type=float, default=10.0,
                    help="seconds for a request body to arrive (408 and closed after)")
    sv.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds for a request's line and headers to arrive, from its first "
                    "byte (from connecting, for the first request); then the connection is "
                    "closed (408 if a request had begun), so a stalled client cannot hold it "
                    "(default 10)")
    sv.add_argument("--keep-alive", type=float, default=5.0,
                    help="seconds an idle connection stays open between requests (default 5)")
    sv.add_argument("--max-connections", type=int, default=512,
                    help="connections open at once; one more is answered 503 and closed "
                    "(default 512)")
    sv.add_argument("--max-response-kb", type=int, default=4096,
                    help="answer size (413 over it; estimated before translating)")
    sv.add_argument("--log-level", default="info",
                    choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level")
    sv.set_defaults(func=handlers["serve"])

    av = sub.add_parser("average", help="average the newest step checkpoints (weights file)")
    av.add_argument("--model", required=True, help="model directory")
    av.add_argument("--last", type=int, default=5, help="how many of the newest (default 5)")
    av.add_argument("--output", "-o", help="weights file (default MODEL/averaged.safetensors)")
    av.set_defaults(func=handlers["average"])

    st = sub.add_parser("study", help="train variants of a config, evaluate them, write a report")
    st.add_argument("study", help="study YAML (base config, variants, budget, test set)")
    st.add_argument("overrides", nargs="*", help="study overrides, e.g. budget.steps=100")
    st.add_argument("--check", action="store_true",
                    help="validate the study and list its variants; train nothing")
    st.set_defaults(func=handlers["study"])

    x = sub.add_parser("export", help="export a model for CTranslate2 or ONNX Runtime")
    x.add_argument("--model", required=True, help="model directory")
    x.add_argument("--format", required=True, choices=["ctranslate2", "onnx"],
                   help="ctranslate2 (fast CPU/GPU inference) or onnx (onnxruntime)")
    x.add_argument("--output", "-o", required=True, help="output directory")
    x.add_argument("--quantization", default=None,
                   help="ctranslate2: weight type, e.g. int8 or float16 (default float32)")
    x.add_argument("--opset", type=int, default=17, help="onnx: opset version (default 17)")
    x.set_defaults(func=handlers["export"])

    g = sub.add_parser("data", help="fetch a public data set, make an image data set, or "
                       "prepare a config's training data")
    g.add_argument("name", choices=["multi30k", "prepare", "digits", "textlines"],
                   help="multi30k: download; prepare CONFIG: tokenize the training corpora "
                   "once into memory-mapped arrays (then train with data.prepared=DIR); "
                   "digits: strings of handwritten digits (scikit-learn's UCI digits); "
                   "textlines TEXT_FILE: the file's sentences rendered in matplotlib's fonts")
    g.add_argument("config", nargs="?", help="prepare: the training config (YAML); textlines: "
                   "a text file of sentences (one per line)")
    g.add_argument("overrides", nargs="*", help="prepare: dotted overrides")
    g.add_argument("--out", help="multi30k: folder for the plain-text files; prepare: folder "
                   "for the prepared data (default: the config's data.prepared)")
    g.add_argument("--workers", type=int, help="prepare: processes (default data.workers, "
                   "0 = all cores)")
    g.add_argument("--from", dest="from_dir", help="copy from a local folder instead of downloading")
    g.add_argument("--langs", nargs="+", default=["de", "en"],
                   help="multi30k: languages to fetch (default: de en)")
    g.add_argument("--seed", type=int, default=0, help="digits, textlines: random seed")
    g.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"),
                   help="digits, textlines: images per split (default 6000 500 500; "
                   "textlines 4000 300 300)")
    g.add_argument("--lengths", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="digits: digits per string (default 1 8)")
    g.add_argument("--test-lengths", type=int, nargs="+", metavar="N",
                   help="digits: the test strings' lengths, drawn from these (default: as "
                   "--lengths), e.g. 3 5 8 12 16 to test beyond the trained lengths")
    g.set_defaults(func=handlers["data"])
    _say_defaults(p)
    return p


def _say_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option whose help does not give its default yet gets '(default: X)' appended."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _say_defaults(sub)
        elif (action.option_strings and action.help and action.default not in (None, False)
              and action.default != argparse.SUPPRESS and "default" not in action.help):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) \
                else action.default
            action.help += f" (default: {str(shown).replace('%', '%%')})"
