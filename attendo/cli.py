"""The ``attendo`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("attendo")

# attendo.align.METHODS and WORD_RULES, spelt out so that parsing arguments imports no torch
# (tests/test_align.py keeps them equal)
ALIGN_METHODS = ("argmax", "threshold", "shift", "shift-threshold")
ALIGN_WORD_RULES = ("any", "mean")
ALIGN_SYMMETRIZE = ("intersect", "union", "grow-diag", "grow-diag-final", "average")


class CLIError(Exception):
    """A usage problem reported as 'attendo CMD: error: ...' with exit code 2."""


def _out_of_memory(e: RuntimeError) -> bool:
    """torch's allocation failures: CUDA's OutOfMemoryError, the CPU allocator's message."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or any(
        m in text for m in ("out of memory", "can't allocate memory", "DefaultCPUAllocator"))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _os_error_text(e: OSError) -> str:
    """One line for an OSError, naming its file(s) when it has them."""
    if e.filename is None:
        return str(e)
    where = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{where}: {e.strerror or e}"


def _check_output_path(path: str | None, flag: str) -> None:
    """Fail before any work when an output file given as ``flag`` is a directory."""
    if path and Path(path).is_dir():
        raise CLIError(f"{path}: is a directory, expected a file path for {flag}")


def _check_decode_flags(args) -> None:
    """Numbers given on the command line for decoding, checked before the model loads."""
    for flag in ("beam", "batch_size", "n_best"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    alpha = getattr(args, "length_penalty", None)
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise CLIError(
            f"--length-penalty must be a finite number >= 0 (GNMT alpha; 0 = off), got {alpha}"
        )


def _check_n_best(n_best: int | None, beam: int | None, default_beam: int) -> None:
    beam = default_beam if beam is None else beam
    if n_best is not None and n_best > beam:
        raise CLIError(f"--n-best ({n_best}) must be <= the beam size ({beam}; set it with --beam)")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def cmd_demo(args) -> int:
    from .demo import run_demo

    acc = run_demo(args.out, args.overrides)
    return 0 if acc >= 0 else 1


def cmd_train(args) -> int:
    from .config import load_config

    if args.resume:
        from .train import resume

        overrides = list(args.overrides)
        if args.config:  # argparse puts the first override into the optional config slot
            if "=" not in args.config:
                raise CLIError("with --resume DIR the config is DIR/config.yaml; give only "
                               "dotted overrides (e.g. train.max_steps=20000)")
            overrides.insert(0, args.config)
        resume(args.resume, overrides)
        return 0
    if not args.config:
        raise CLIError("give a config file, or --resume DIR")
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, overrides)  # before importing torch: bad configs fail fast
    from . import distributed
    from .utils import DirLock

    out = Path(cfg.train.out_dir)
    # held from before clear_run: --overwrite of a directory a training is writing into is
    # refused, not carried out under it (the trainer takes the same lock again)
    with DirLock(out) if distributed.is_rank_zero() else contextlib.nullcontext():
        _train_new(args, cfg, out)
    return 0


def _train_new(args, cfg, out: Path) -> None:
    from . import distributed
    from .train import Trainer, clear_run

    leftovers = (out / "model.safetensors").exists() or (out / "checkpoints").is_dir()
    if (out / "last.safetensors").exists() and not args.overwrite:
        raise CLIError(
            f"{out} already holds a training run; use --resume {out} to continue it, "
            "--overwrite to start over, or set train.out_dir"
        )
    if (out / "last.safetensors").exists() or leftovers:
        # without last.safetensors a run never completed a checkpoint: nothing to resume,
        # so its leftovers are cleared as --overwrite would
        if not args.overwrite:
            log.warning("%s: a run stopped before its first checkpoint; starting over", out)
        if distributed.is_rank_zero():  # under torchrun only rank 0 touches the files
            clear_run(out)
    Trainer(cfg).run()


def _read_input(path: str | None) -> list[str]:
    """Sentences from a file or stdin, by the same rules (see :func:`read_lines`): a
    byte-order mark at the start of a line (stdin may be files joined with cat) and surrounding
    whitespace are dropped; invalid UTF-8 and control characters other than tab are an error
    naming the file (or ``<stdin>``) and line."""
    from .data.corpus import read_lines

    if path and path != "-":
        return read_lines(path, max_chars=None)
    return read_lines("<stdin>", max_chars=None, stream=sys.stdin.buffer)


def _sentence_arguments(sentences: list[str]) -> list[str]:
    """Sentences given as command-line arguments, by the rule of files
    (:func:`attendo.data.corpus.clean_text`); an error names the argument, counted from 1."""
    from .data.corpus import TextError, clean_text

    out = []
    for i, text in enumerate(sentences, start=1):
        try:
            out.append(clean_text(text))
        except TextError as e:
            raise e.located(f"sentence argument {i}") from None
    return out


def cmd_translate(args) -> int:
    from .translator import Translator
    from .utils import atomic_write_text

    _check_decode_flags(args)
    _check_output_path(args.output, "--output")
    translator = Translator.from_dir(args.model, weights=args.checkpoint, device=args.device,
                                     overrides=args.overrides)
    _check_n_best(args.n_best, args.beam, translator.cfg.decode.beam_size)
    texts = _read_input(args.input)
    out = translator.translate(
        texts, beam=args.beam, n_best=args.n_best, batch_size=args.batch_size,
        length_penalty=args.length_penalty,
    )
    lines = []
    for i, t in enumerate(out):
        if args.n_best > 1:
            hyps = t.nbest or [t] * args.n_best  # an empty input still gets n lines
            lines.extend(f"{i} ||| {h.text} ||| {h.score:.4f}" for h in hyps)
        else:
            lines.append(t.text)
    text = "".join(line + "\n" for line in lines)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, format_report
    from .translator import Translator
    from .utils import atomic_write_text

    _check_decode_flags(args)
    _check_output_path(args.output, "--output")
    translator = Translator.from_dir(args.model, weights=args.checkpoint, device=args.device,
                                     overrides=args.overrides)
    if args.align_gold and not getattr(translator.model.decoder, "use_attn", True):
        raise CLIError(f"{args.model}: --align-gold needs attention, and this model has none")
    if not 0.0 < args.align_threshold <= 1.0:
        raise CLIError(f"--align-threshold must be in (0, 1], got {args.align_threshold}")
    if args.rare_max_count < 0:
        raise CLIError(f"--rare-max-count must be >= 0, got {args.rare_max_count}")
    report, hyps = evaluate(translator, args.src, args.ref, beam=args.beam,
                            batch_size=args.batch_size, length_penalty=args.length_penalty,
                            diagnostics=not args.no_diagnostics, align_gold=args.align_gold,
                            align_method=args.align_method, align_threshold=args.align_threshold,
                            rare_max_count=args.rare_max_count)
    if args.output:
        atomic_write_text(args.output, "".join(h + "\n" for h in hyps))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


PAIR_HINT = ("attendo {cmd} aligns every pair: --src and --tgt need a non-empty sentence on "
             "every line; fix or remove this line in both files")


def cmd_align(args) -> int:
    from . import diagnostics as dg
    from .align import (
        align_pairs,
        average,
        pair_word_rows,
        score,
        symmetrize,
        translation_links,
        translation_word_rows,
        transpose,
    )
    from .data.corpus import read_lines, read_parallel
    from .translator import Translator
    from .utils import atomic_write_text

    _check_decode_flags(args)
    if args.translate == bool(args.tgt):
        raise ValueError("give either --tgt (align given pairs) or --translate (align the "
                         "model's own translations)")
    if args.gold and args.translate:
        raise ValueError("--gold scores given pairs: use --tgt, not --translate")
    if args.symmetrize and not args.reverse_model:
        raise ValueError("--symmetrize needs --reverse-model (the target -> source model)")
    soft = args.symmetrize == "average"
    if soft and args.words != "mean":
        raise ValueError("--symmetrize average averages word weights: add --words mean")
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    for path, flag in ((args.output, "--output"), (args.hyp_output, "--hyp-output")):
        if path and Path(path).is_dir():
            raise ValueError(f"{path}: is a directory, expected a file path for {flag}")
    if args.hyp_output and not args.translate:
        raise ValueError("--hyp-output is for --translate")
    fwd = Translator.from_dir(args.model, device=args.device)
    rev = Translator.from_dir(args.reverse_model, device=args.device) if args.reverse_model else None
    for m, t in ((args.model, fwd), (args.reverse_model, rev)):
        if t is not None and not getattr(t.model.decoder, "use_attn", True):
            raise ValueError(f"{m}: this model has no attention (model.attention: none)")
    if args.translate:
        src = read_lines(args.src, max_chars=None)
    else:
        src, tgt, _ = read_parallel(args.src, args.tgt, max_chars=10**6, hint=PAIR_HINT.format(cmd="align"))
    gold = None
    if args.gold:
        gold = dg.read_gold_alignments(args.gold, args.gold_format)
        dg.check_gold(gold, args.gold, [len(s.split()) for s in src],
                      [len(t.split()) for t in tgt])
    heads = dict(method=args.method, layer=args.layer, head=args.head)
    opts = dict(heads, threshold=args.threshold, words=args.words)
    if args.translate:
        outs = fwd.translate(src, beam=args.beam, return_attention=True)
        tgt = [o.text for o in outs]
        if soft:
            weights = [translation_word_rows(fwd, o, s, **heads) for o, s in zip(outs, src)]
        else:
            links = [translation_links(fwd, o, s, **opts) for o, s in zip(outs, src)]
    elif soft:
        weights = pair_word_rows(fwd, src, tgt, batch_size=args.batch_size, **heads)
    else:
        links = align_pairs(fwd, src, tgt, batch_size=args.batch_size, **opts)
    if soft:
        back_w = pair_word_rows(rev, tgt, src, batch_size=args.batch_size, **heads)
        links = [None if f is None or b is None else average(f, b, args.method, args.threshold)
                 for f, b in zip(weights, back_w)]
    elif rev is not None:
        back = [transpose(x) for x in align_pairs(rev, tgt, src, batch_size=args.batch_size,
                                                  **opts)]
        links = [None if f is None or b is None else symmetrize(f, b, args.symmetrize or "grow-diag")
                 for f, b in zip(links, back)]
    skipped = sum(x is None for x in links)
    if skipped:
        log.warning("%d of %d sentence pairs could not be mapped from pieces to words (or "
                    "have an empty side): written as empty lines", skipped, len(links))
    lines = [dg.format_alignment_line(x or ()) for x in links]
    if args.translate and args.hyp_output:  # the translations the links refer to
        atomic_write_text(args.hyp_output, "".join(t + "\n" for t in tgt))
    text = "".join(line + "\n" for line in lines)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if gold is not None:
        r = score(links, gold)
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        report = (f"AER {fmt(r['aer'])}  precision {fmt(r['precision'])}  recall "
                  f"{fmt(r['recall'])}  ({r['sentences']} sentences, {r['skipped']} skipped; "
                  f"links {r['links']}, sure {r['sure']})")
        print(report, file=sys.stdout if args.output else sys.stderr)
    return 0


def cmd_align_prior(args) -> int:
    """eflomal forward and reverse word alignments of a parallel corpus, symmetrised with
    grow-diag, written as Pharaoh lines (one per pair) over the whitespace words of the raw
    text: the links that ``train.guided_alignment.file`` reads."""
    from . import diagnostics as dg
    from .align import eflomal_links, symmetrize
    from .data.corpus import read_parallel
    from .utils import atomic_write_text

    _check_output_path(args.output, "--output")
    src, tgt, _ = read_parallel(
        args.src, args.tgt, max_chars=10**6, hint=PAIR_HINT.format(cmd="align-prior"))
    fwd, rev = eflomal_links(src, tgt, args.lowercase)
    links = [symmetrize(f, r, "grow-diag") for f, r in zip(fwd, rev)]
    atomic_write_text(args.output, "".join(dg.format_alignment_line(x) + "\n" for x in links))
    log.info("align-prior: %d sentence pairs, %d links written to %s", len(links),
             sum(len(x) for x in links), args.output)
    return 0


def _forced_outputs(translator, texts: list[str], refs: list[str], layer: int | None,
                    head: int | None) -> list:
    """Translations holding the attention teacher-forced on the given targets ``refs``
    (``text`` the target, no score; no attention where a side is empty)."""
    from .align import forced_attention
    from .translator import Translation

    out = []
    for ref, fa in zip(refs, forced_attention(translator, texts, refs, layer=layer, head=head)):
        if fa is None:
            out.append(Translation(ref, [], [], math.nan, math.nan, None))
        else:
            sp, tp, attn = fa
            out.append(Translation(ref, sp, tp + ["</s>"], math.nan, math.nan, attn))
    return out


def _attend_gold(path: str, fmt: str, texts: list[str], refs: list[str]) -> list:
    """``--align-gold``: one line of links per sentence, each inside its sentence pair."""
    from . import diagnostics as dg

    gold = dg.read_gold_alignments(path, fmt)
    if len(gold) != len(texts):
        raise CLIError(f"{path}: {len(gold)} lines, but there are {len(texts)} input sentences "
                       "(--align-gold needs one line of links per sentence, in order)")
    maybe, base = dg.GOLD_FORMATS[fmt]
    for k, (g, src, ref) in enumerate(zip(gold, texts, refs)):
        ns, nt = len(src.split()), len(ref.split())
        for i, j in sorted(g.possible):
            if i >= ns or j >= nt:
                sep = "-" if (i, j) in g.sure else maybe
                raise CLIError(
                    f"{path}:{g.line}: link {i + base}{sep}{j + base} is outside sentence "
                    f"{k + 1} (its source has {ns} words, its target {nt}; {fmt} word indices "
                    f"are {base}-based)")
    return gold


def _attend_links(args, translator, texts: list[str], outs: list, gold: list | None) -> list:
    """Per sentence, the link sets to draw (gold, and/or read off the attention with
    ``--show-alignment``), or None."""
    from .align import tokenizer_kinds, translation_links
    from .viz import LinkSet, alignment_groups, gold_link_sets

    if gold is None and not args.show_alignment:
        return [None] * len(outs)
    kinds = tokenizer_kinds(translator)
    out: list = []
    for k, (src, o) in enumerate(zip(texts, outs)):
        if o.attention is None or o.attention.size == 0:
            out.append(None)
            continue
        sg, tg = alignment_groups(o.src_tokens, o.tgt_tokens, kinds)
        if len(sg) != len(src.split()) or len(tg) != len(o.text.split()):
            log.warning("sentence %d: its pieces do not group into its whitespace words; no "
                        "alignment drawn", k + 1)
            out.append(None)
            continue
        sets = gold_link_sets(gold[k].sure, gold[k].possible) if gold is not None else []
        if args.show_alignment:
            links = translation_links(translator, o, src, method=args.show_alignment,
                                      threshold=args.align_threshold)
            sets.append(LinkSet("model", links or set(), f"attention {args.show_alignment}"))
        out.append(sets or None)
    return out


def cmd_attend(args) -> int:
    from .align import tokenizer_kinds
    from .data.corpus import read_lines
    from .explorer import explorer_data, explorer_page
    from .translator import Translator
    from .utils import atomic_write_text
    from .viz import draw_translation

    _check_decode_flags(args)
    _check_output_path(args.html, "--html")
    if args.tgt and (args.beam is not None or args.n_best is not None):
        raise CLIError("--beam and --n-best are for translating; with --tgt the attention is "
                       "teacher-forced on the given targets")
    if args.align_gold and not args.tgt:
        raise CLIError("--align-gold links name words of the reference, not of the model's "
                       "translation: give the references with --tgt FILE (the attention is "
                       "then teacher-forced on them)")
    if not 0.0 < args.align_threshold <= 1.0:
        raise CLIError(f"--align-threshold must be in (0, 1], got {args.align_threshold}")
    translator = Translator.from_dir(args.model, device=args.device)
    if not getattr(translator.model.decoder, "use_attn", True):
        raise CLIError(f"{args.model}: this model has no attention (model.attention: none)")
    texts = _read_input(args.input) if args.input else _sentence_arguments(args.sentences)
    if not texts:
        raise CLIError("give sentences as arguments or --input FILE")
    refs = None
    if args.tgt:
        refs = read_lines(args.tgt, max_chars=None)
        if len(refs) != len(texts):
            raise CLIError(f"{args.tgt}: {len(refs)} lines, but there are {len(texts)} input "
                           "sentences (--tgt needs one target per sentence, in order)")
    gold = _attend_gold(args.align_gold, args.gold_format, texts, refs) if args.align_gold else None
    if refs is None:
        beam = translator.cfg.decode.beam_size if args.beam is None else args.beam
        _check_n_best(args.n_best, beam, beam)
        n_best = args.n_best or (min(beam, 5) if args.html else 1)
        outs = translator.translate(texts, beam=beam, n_best=n_best, return_attention=True)
    else:
        outs = _forced_outputs(translator, texts, refs, args.layer, args.head)
    selfs = translator.encoder_self_attention([o.src_tokens for o in outs])
    links = _attend_links(args, translator, texts, outs, gold)
    kinds = tokenizer_kinds(translator)
    if args.out is not None or not args.html:  # with --html alone, no PNGs
        out_dir = Path(args.out or "attention")
        for i, (src, o, sa) in enumerate(zip(texts, outs, selfs)):
            if o.attention is None or o.attention.size == 0:
                what = "empty source or target" if refs is not None else "empty input"
                print(f"{i}: {what}, no picture", file=sys.stderr)
                continue
            title = f"{src} -> {o.text}"
            title = title[:120] + ("..." if len(title) > 120 else "")
            # with --tgt, --layer/--head chose the cross-attention (no per-head grids): they
            # still pick the encoder's self-attention
            pick = refs is None or sa is not None
            if refs is not None:  # say what the main heatmap shows
                title += " [given target" + "".join(
                    f", {k} {v}" for k, v in (("layer", args.layer), ("head", args.head))
                    if v is not None) + "]"
            paths = draw_translation(
                o, out_dir, f"attention-{i:03d}", title,
                merge=args.merge_subwords, layer=args.layer if pick else None,
                head=args.head if pick else None, self_attention=sa, dpi=args.dpi,
                alignment=links[i], kinds=kinds,
            )
            for path in paths:
                print(f"{path}\t{o.text}")
    if args.html:
        name = Path(args.model).resolve().name
        data = explorer_data(translator, texts, outs, args.merge_subwords, name, selfs,
                             alignments=links)
        atomic_write_text(args.html, explorer_page(data, title=f"attendo explorer: {name}"))
        print(f"{args.html}\texplorer of {len(texts)} sentence(s)")
    return 0


def cmd_serve(args) -> int:
    try:
        from .server import ServeLimits, serve
    except ImportError as e:
        raise CLIError(
            f"attendo serve needs FastAPI and uvicorn (missing: {e.name}); install them with "
            "pip install 'attendo[serve]'"
        ) from None
    limits = ServeLimits(
        max_body_bytes=args.max_body_kb * 1024, max_sentences=args.max_sentences,
        max_chars=args.max_chars, max_tokens=args.max_tokens, max_beam=args.max_beam,
        timeout_s=args.timeout, read_timeout_s=args.read_timeout,
        max_response_bytes=args.max_response_kb * 1024, header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive, max_connections=args.max_connections,
    )
    try:
        limits.validate()
    except ValueError as e:
        raise CLIError(f"limits: {e}") from None
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise CLIError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    serve(args.model, args.host, args.port, args.device, args.threads, args.max_batch,
          args.max_wait_ms, limits, args.log_level)
    return 0


def cmd_average(args) -> int:
    from safetensors.torch import save as st_save

    from .checkpoint import average_checkpoints, step_checkpoints
    from .translator import Translator
    from .utils import atomic_write_bytes

    model_dir = Path(args.model)
    if args.last < 1:
        raise CLIError(f"--last must be >= 1, got {args.last}")
    _check_output_path(args.output, "--output")
    ckpts = step_checkpoints(model_dir)
    if not ckpts:
        raise CLIError(f"{model_dir}: no step checkpoints in {model_dir / 'checkpoints'}")
    chosen = ckpts[-args.last :]
    if len(chosen) < args.last:
        log.warning("only %d step checkpoints in %s; averaging all of them "
                    "(train.keep_last keeps the newest N; 0 keeps all)", len(chosen), model_dir)
    out = Path(args.output) if args.output else model_dir / "averaged.safetensors"
    # the directory, its config (sizes) and the newest checkpoint are checked before anything
    # is written; the average itself is checked once written
    Translator.from_dir(model_dir, weights=chosen[-1])
    meta = {"averaged": [p.name for p in chosen]}
    atomic_write_bytes(out, st_save(average_checkpoints(chosen),
                                    metadata={"attendo": json.dumps(meta)}))
    Translator.from_dir(model_dir, weights=out)  # the average must load into the configured model
    print(f"{out}\taverage of {len(chosen)}: {' '.join(p.name for p in chosen)}")
    return 0


def cmd_study(args) -> int:
    from .study import describe, load_study, run_study

    study = load_study(args.study, args.overrides)
    if args.check:
        print(describe(study))
        return 0
    try:
        print(run_study(study))
    except KeyboardInterrupt:
        print(f"attendo study: run the same command again to resume ({study.out})",
              file=sys.stderr)
        raise
    return 0


def cmd_export(args) -> int:
    from .export import ExportError, export_model

    if not (Path(args.model) / "config.yaml").exists():
        raise CLIError(f"{args.model}: not a model directory (no config.yaml)")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise CLIError(f"{args.output}: exists and is not a directory")
    try:
        out = export_model(args.model, args.format, args.output, quantization=args.quantization,
                           opset=args.opset)
    except ExportError as e:
        raise CLIError(str(e)) from None
    print(out)
    return 0


def cmd_data(args) -> int:
    if args.name == "prepare":
        return cmd_data_prepare(args)
    if not args.out or args.config:
        raise CLIError("usage: attendo data multi30k --out DIR [--from DIR] [--langs ...]")
    from .data.download import fetch_multi30k

    summary = fetch_multi30k(args.out, from_dir=Path(args.from_dir) if args.from_dir else None,
                             langs=tuple(args.langs))
    for name, n in summary.items():
        print(f"{Path(args.out) / name}\t{n} lines")
    return 0


def cmd_data_prepare(args) -> int:
    from .config import load_config

    if not args.config:
        raise CLIError("usage: attendo data prepare CONFIG [--out DIR] [overrides]")
    cfg = load_config(args.config, list(args.overrides))
    out = args.out or cfg.data.prepared
    if not out:
        raise CLIError("give --out DIR, or set data.prepared in the config")
    if cfg.data.toy:
        raise CLIError("data.toy: a generated task is made in memory; there is nothing to prepare")
    from .data.binarized import prepare

    m = prepare(cfg.data, out, seed=cfg.train.seed, workers=args.workers,
                progress=sys.stderr.isatty())
    print(f"{out}\t{m['pairs']} pairs ({m['skipped']} skipped), {m['tokens']['src']} + "
          f"{m['tokens']['tgt']} tokens, {m['seconds']['total']:.1f} s")
    if not cfg.data.prepared:
        print(f"train with: attendo train {args.config} data.prepared={out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attendo",
        description="Attention-based sequence-to-sequence models: train, decode, evaluate, see.",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small attention model on a generated task "
                                    "(trains 1-2.5 min)")
    d.add_argument("--out", default="runs/demo", help="model directory (default runs/demo)")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=500")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=5e-4")
    t.add_argument("--out", help="model directory (sets train.out_dir)")
    t.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    t.add_argument("--overwrite", action="store_true", help="start over in a used out_dir")
    t.set_defaults(func=cmd_train)

    def decode_args(q):
        q.add_argument("--model", required=True, help="model directory")
        q.add_argument("--checkpoint", help="weights file (default MODEL/model.safetensors)")
        q.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy)")
        q.add_argument("--batch-size", type=int, default=None, help="sentences per batch")
        q.add_argument("--length-penalty", type=float, default=None, help="GNMT alpha")
        q.add_argument("--device", default="cpu")
        q.add_argument("overrides", nargs="*",
                       help="decode settings, e.g. decode.block_ngram_repeat=3 "
                            "decode.coverage_penalty=0.2")

    tr = sub.add_parser("translate", help="translate stdin to stdout, or --input/--output")
    decode_args(tr)
    tr.add_argument("--input", "-i", help="input file (default stdin)")
    tr.add_argument("--output", "-o", help="output file (default stdout)")
    tr.add_argument("--n-best", type=int, default=1, help="print N best as 'i ||| text ||| score'")
    tr.set_defaults(func=cmd_translate)

    e = sub.add_parser("evaluate", help="BLEU, chrF, perplexity and diagnostics on a test set")
    decode_args(e)
    e.add_argument("--src", required=True)
    e.add_argument("--ref", required=True)
    e.add_argument("--output", "-o", help="also write the hypotheses here")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--no-diagnostics", action="store_true",
                   help="only BLEU, chrF and perplexity (no length/repetition/rare/attention)")
    e.add_argument("--align-gold", metavar="FILE",
                   help="gold word alignments, one line per sentence: 'i-j' sure, 'i?j' possible "
                        "(0-based source-reference word indices); adds AER")
    e.add_argument("--align-method", choices=list(ALIGN_METHODS), default="argmax",
                   help="links from attention (see attendo align): each reference piece's most "
                        "attended source piece, every weight >= --align-threshold, or either "
                        "one step later (shift, shift-threshold)")
    e.add_argument("--align-threshold", type=float, default=0.5)
    e.add_argument("--rare-max-count", type=int, default=5,
                   help="a source word seen at most this many times in training is rare (5)")
    e.set_defaults(func=cmd_evaluate)

    al = sub.add_parser("align", help="word alignments from attention, in Pharaoh format")
    al.add_argument("--model", required=True, help="model directory (source -> target)")
    al.add_argument("--src", required=True, help="source sentences, one per line")
    al.add_argument("--tgt", help="target sentences to align with (teacher forcing)")
    al.add_argument("--translate", action="store_true",
                    help="align the model's own translations instead of --tgt")
    al.add_argument("--hyp-output", metavar="FILE", help="with --translate: write them here")
    al.add_argument("--output", "-o", help="links file, 'i-j' 0-based (default stdout)")
    al.add_argument("--method", choices=list(ALIGN_METHODS), default="argmax",
                    help="each target piece's most attended source piece; every weight >= "
                         "--threshold; or either one step later (shift, shift-threshold; "
                         "Chen et al. 2020)")
    al.add_argument("--threshold", type=float, default=0.5)
    al.add_argument("--words", choices=list(ALIGN_WORD_RULES), default="any",
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
    al.add_argument("--symmetrize", choices=list(ALIGN_SYMMETRIZE),
                    help="combine the two directions' links (intersect, union, grow-diag, "
                         "grow-diag-final; Koehn et al. 2003) or, with --words mean, average "
                         "their word weights before the method picks links (average)")
    al.add_argument("--gold", metavar="FILE", help="gold links: print AER, precision, recall")
    al.add_argument("--gold-format", choices=["pharaoh", "talp"], default="pharaoh",
                    help="pharaoh: 0-based, 'i?j' possible; talp: 1-based, 'ipj' possible")
    al.add_argument("--beam", type=int, default=None, help="with --translate: beam size")
    al.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    al.add_argument("--device", default="cpu")
    al.set_defaults(func=cmd_align)

    ap = sub.add_parser("align-prior", help="eflomal word links of a training corpus (for "
                        "train.guided_alignment.file; needs attendo[align])")
    ap.add_argument("--src", required=True, help="source sentences, one per line")
    ap.add_argument("--tgt", required=True, help="target sentences, one per line")
    ap.add_argument("--output", "-o", required=True,
                    help="links file: grow-diag symmetrised, Pharaoh 'i-j' 0-based")
    ap.add_argument("--lowercase", action="store_true", help="lowercase before aligning")
    ap.set_defaults(func=cmd_align_prior)

    a = sub.add_parser("attend", help="attention heatmaps (PNG) and the HTML explorer")
    a.add_argument("--model", required=True)
    a.add_argument("sentences", nargs="*")
    a.add_argument("--input", "-i", help="file of sentences")
    a.add_argument("--out", default=None,
                   help="folder for PNGs (default ./attention; with --html, PNGs only if given)")
    a.add_argument("--html", metavar="FILE",
                   help="write the interactive explorer of all sentences as one HTML file")
    a.add_argument("--beam", type=int, default=None)
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
    a.add_argument("--show-alignment", choices=list(ALIGN_METHODS), default=None,
                   help="draw the word links read off the attention as dots (see attendo align)")
    a.add_argument("--align-threshold", type=float, default=0.5,
                   help="weight for --show-alignment threshold (default 0.5)")
    a.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=cmd_attend)

    sv = sub.add_parser("serve", help="HTTP translation server with the live explorer page")
    sv.add_argument("--model", required=True, help="model directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--device", default="cpu")
    sv.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    sv.add_argument("--max-batch", type=int, default=32,
                    help="sentences merged into one translator call (1 = no batching)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long the first request waits for others to join its batch")
    sv.add_argument("--max-sentences", type=int, default=64, help="sentences per request")
    sv.add_argument("--max-chars", type=int, default=2000, help="characters per sentence")
    sv.add_argument("--max-tokens", type=int, default=256, help="source pieces per sentence")
    sv.add_argument("--max-beam", type=int, default=10)
    sv.add_argument("--max-body-kb", type=int, default=256, help="request body size")
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
                    choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(func=cmd_serve)

    av = sub.add_parser("average", help="average the newest step checkpoints (weights file)")
    av.add_argument("--model", required=True, help="model directory")
    av.add_argument("--last", type=int, default=5, help="how many of the newest (default 5)")
    av.add_argument("--output", "-o", help="weights file (default MODEL/averaged.safetensors)")
    av.set_defaults(func=cmd_average)

    st = sub.add_parser("study", help="train variants of a config, evaluate them, write a report")
    st.add_argument("study", help="study YAML (base config, variants, budget, test set)")
    st.add_argument("overrides", nargs="*", help="study overrides, e.g. budget.steps=100")
    st.add_argument("--check", action="store_true",
                    help="validate the study and list its variants; train nothing")
    st.set_defaults(func=cmd_study)

    x = sub.add_parser("export", help="export a model for CTranslate2 or ONNX Runtime")
    x.add_argument("--model", required=True, help="model directory")
    x.add_argument("--format", required=True, choices=["ctranslate2", "onnx"])
    x.add_argument("--output", "-o", required=True, help="output directory")
    x.add_argument("--quantization", default=None,
                   help="ctranslate2: weight type, e.g. int8 or float16 (default float32)")
    x.add_argument("--opset", type=int, default=17, help="onnx: opset version (default 17)")
    x.set_defaults(func=cmd_export)

    g = sub.add_parser("data", help="fetch a public data set, or prepare a config's training data")
    g.add_argument("name", choices=["multi30k", "prepare"],
                   help="multi30k: download; prepare CONFIG: tokenize the training corpora "
                   "once into memory-mapped arrays (then train with data.prepared=DIR)")
    g.add_argument("config", nargs="?", help="prepare: the training config (YAML)")
    g.add_argument("overrides", nargs="*", help="prepare: dotted overrides")
    g.add_argument("--out", help="multi30k: folder for the plain-text files; prepare: folder "
                   "for the prepared data (default: the config's data.prepared)")
    g.add_argument("--workers", type=int, help="prepare: processes (default data.workers, "
                   "0 = all cores)")
    g.add_argument("--from", dest="from_dir", help="copy from a local folder instead of downloading")
    g.add_argument("--langs", nargs="+", default=["de", "en"])
    g.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options (train c.yaml --out D train.lr=1e-3): collect leftovers
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if "=" not in x or x.startswith("-") or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _setup_logging(args.verbose)
    from .config import ConfigError
    from .data.corpus import CorpusError
    from .utils import DirectoryBusy

    try:
        return args.func(args)
    except (CLIError, ConfigError, CorpusError, ValueError, DirectoryBusy) as e:
        print(f"attendo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # IsADirectoryError, PermissionError, FileNotFoundError, a full disk...
        print(f"attendo {args.command}: error: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch.OutOfMemoryError is one; any other is a bug: traceback
        if not _out_of_memory(e):
            raise
        print(f"attendo {args.command}: error: out of memory ({_first_line(e)}); the model "
              "fits (its size is checked before it is built) but a batch's activations did "
              "not: lower train.batch_size (decoding: --batch-size or decode.batch_size). "
              "Checkpoints already written are kept; resume with attendo train --resume DIR",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attendo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
