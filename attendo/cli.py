"""The ``attendo`` command line: one entry point, one subcommand per job. Each command parses,
calls one library function and prints; the options are :mod:`attendo.cli_args`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .cli_args import CLIError, check_decode_flags, check_n_best, check_output_path
from .errors import AttendoError, is_out_of_memory, os_error_text, out_of_memory_text
from .utils import atomic_write_text

log = logging.getLogger("attendo")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


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
    from .train import train_new

    train_new(cfg, overwrite=args.overwrite)
    return 0


def read_input(path: str | None) -> list[str]:
    """Sentences from a file or stdin (``<stdin>`` in errors), by the rules of :func:`read_lines`
    (stdin may be files joined with cat: a byte-order mark may start any line)."""
    from .data.corpus import read_lines

    if path and path != "-":
        return read_lines(path, max_chars=None)
    return read_lines("<stdin>", max_chars=None, stream=sys.stdin.buffer)


def write_output(path: str | None, text: str) -> None:
    """``text`` to the file ``path`` (atomically) or to stdout."""
    if path:
        atomic_write_text(path, text)
    else:
        sys.stdout.write(text)


def load_models(args):
    """The Translator of ``--model DIR [DIR ...]`` (several: an ensemble) and the decoding
    keywords of --replace-unk, --unk-dict and the sampling options."""
    from .search import Sampling
    from .translator import Translator
    from .unk import decode_options

    # "--model A B key=value": nargs="+" also takes the dotted overrides that follow
    given = args.model
    args.model = [m for m in given if "=" not in m or Path(m).exists()]
    args.overrides = [m for m in given if m not in args.model] + list(args.overrides)
    if len(args.model) > 1 and args.checkpoint:
        raise CLIError("--checkpoint names one weights file; an ensemble (several --model "
                       "directories) uses each directory's model.safetensors")
    opts = decode_options(args.replace_unk, args.unk_dict)
    if args.sample:
        opts["sampling"] = Sampling(args.temperature, args.top_k, args.top_p, args.n_samples,
                                    args.seed)
    translator = Translator.ensemble(args.model, [args.checkpoint] * len(args.model),
                                     device=args.device, overrides=args.overrides)
    return translator, opts


def cmd_translate(args) -> int:
    from .data.corpus import read_requests
    from .translator import nbest_lines

    check_decode_flags(args)
    translator, opts = load_models(args)
    n_best = args.n_samples if args.sample else args.n_best
    if not args.sample:
        check_n_best(args.n_best, args.beam, translator.cfg.decode.beam_size)
    if args.image and (args.input or args.input_format != "text"):
        raise CLIError("give images as --image FILE ... or as a list in --input, not both "
                       "(and --input-format tsv/jsonl is for text input)")
    texts = list(args.image) if args.image else read_input(args.input)
    texts, rules = read_requests(texts, args.input_format, args.input or "<stdin>")
    out = translator.translate(
        texts, beam=args.beam, n_best=args.n_best, batch_size=args.batch_size,
        length_penalty=args.length_penalty, **rules, **opts,
    )
    write_output(args.output, nbest_lines(out, n_best))
    return 0


def cmd_score(args) -> int:
    """Forced decoding (:mod:`attendo.scoring`): per pair '<log_prob>\\t<tokens>' (or, with
    --json, its :meth:`~attendo.scoring.Scored.to_dict`); a summary on stderr."""
    from .scoring import check_pairs, format_scores, score_pairs, summary
    from .translator import Translator

    check_decode_flags(args)
    if args.src == args.tgt == "-":
        raise CLIError("--src and --tgt cannot both be stdin (-)")
    src, tgt = read_input(args.src), read_input(args.tgt)
    check_pairs(src, tgt, args.src, args.tgt)
    translator = Translator.from_dir(args.model, weights=args.checkpoint, device=args.device,
                                     overrides=args.overrides)
    scored = score_pairs(translator, src, tgt, batch_size=args.batch_size)
    write_output(args.output, format_scores(scored, args.json))
    print(summary(scored), file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, format_report

    check_decode_flags(args)
    translator, opts = load_models(args)
    if args.align_gold and not translator.model.has_attention:
        raise CLIError(f"{' '.join(args.model)}: --align-gold needs attention, and this model "
                       "has none")
    if not 0.0 < args.align_threshold <= 1.0:
        raise CLIError(f"--align-threshold must be in (0, 1], got {args.align_threshold}")
    if args.rare_max_count < 0:
        raise CLIError(f"--rare-max-count must be >= 0, got {args.rare_max_count}")
    report, hyps = evaluate(translator, args.src, args.ref, beam=args.beam,
                            batch_size=args.batch_size, length_penalty=args.length_penalty,
                            diagnostics=not args.no_diagnostics, align_gold=args.align_gold,
                            align_method=args.align_method, align_threshold=args.align_threshold,
                            rare_max_count=args.rare_max_count, decode_opts=opts,
                            input_format=args.input_format)
    if args.output:
        atomic_write_text(args.output, "".join(h + "\n" for h in hyps))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_align(args) -> int:
    from .align import align_files, check_options, format_score
    from .translator import Translator

    check_decode_flags(args)
    check_options(args.translate, args.tgt, args.gold, args.symmetrize, args.reverse_model,
                  args.words, args.threshold, args.output, args.hyp_output)
    fwd = Translator.from_dir(args.model, device=args.device)
    rev = Translator.from_dir(args.reverse_model, device=args.device) if args.reverse_model else None
    for m, t in ((args.model, fwd), (args.reverse_model, rev)):
        if t is not None and not t.model.has_attention:
            raise CLIError(f"{m}: this model has no attention (model.attention: none)")
    r = align_files(fwd, args.src, args.tgt, rev, translate=args.translate, method=args.method,
                    threshold=args.threshold, words=args.words, layer=args.layer,
                    head=args.head, how=args.symmetrize, gold_path=args.gold,
                    gold_format=args.gold_format, beam=args.beam, batch_size=args.batch_size)
    if r.hyps is not None and args.hyp_output:  # the translations the links refer to
        atomic_write_text(args.hyp_output, "".join(t + "\n" for t in r.hyps))
    write_output(args.output, "".join(line + "\n" for line in r.lines))
    if r.score is not None:
        print(format_score(r.score), file=sys.stdout if args.output else sys.stderr)
    return 0


def cmd_align_prior(args) -> int:
    """eflomal forward and reverse word alignments of a parallel corpus, symmetrised with
    grow-diag, written as Pharaoh lines (one per pair) over the whitespace words of the raw
    text: the links that ``train.guided_alignment.file`` reads."""
    from .align import prior_lines

    check_output_path(args.output, "--output")
    lines, n_links = prior_lines(args.src, args.tgt, args.lowercase)
    atomic_write_text(args.output, "".join(line + "\n" for line in lines))
    log.info("align-prior: %d sentence pairs, %d links written to %s", len(lines), n_links,
             args.output)
    return 0


def _attend_images(args, translator) -> int:
    from .attend import draw_image_attention

    if args.tgt or args.align_gold or args.html or args.show_alignment:
        raise CLIError("--tgt, --align-gold, --html and --show-alignment are for text models")
    paths = read_input(args.input) if args.input else list(args.sentences)
    if not paths:
        raise CLIError("give image files as arguments or --input LIST")
    for _, png, text in draw_image_attention(translator, paths, Path(args.out or "attention"),
                                             beam=args.beam, dpi=args.dpi):
        print(f"{png}\t{text}")
    return 0


def cmd_attend(args) -> int:
    from .attend import attend, check_options, draw_pictures, explorer_html, read_gold, read_targets
    from .data.corpus import clean_arguments
    from .translator import Translator

    check_decode_flags(args)
    check_output_path(args.html, "--html")
    check_options(args.tgt, args.beam, args.n_best, args.align_gold, args.align_threshold)
    translator = Translator.from_dir(args.model, device=args.device)
    if not translator.model.has_attention:
        raise CLIError(f"{args.model}: this model has no attention (model.attention: none)")
    if translator.cfg.data.src_type == "image":
        return _attend_images(args, translator)
    texts = read_input(args.input) if args.input else clean_arguments(args.sentences)
    if not texts:
        raise CLIError("give sentences as arguments or --input FILE")
    refs = read_targets(args.tgt, len(texts)) if args.tgt else None
    gold = read_gold(args.align_gold, args.gold_format, texts, refs) if args.align_gold else None
    beam = translator.cfg.decode.beam_size if args.beam is None else args.beam
    check_n_best(args.n_best, beam, beam)
    n_best = args.n_best or (min(beam, 5) if args.html else 1)
    a = attend(translator, texts, refs, gold, beam=beam, n_best=n_best, layer=args.layer,
               head=args.head, show_alignment=args.show_alignment,
               align_threshold=args.align_threshold)
    if args.out is not None or not args.html:  # with --html alone, no PNGs
        for i, paths, text in draw_pictures(
                translator, texts, a, Path(args.out or "attention"), merge=args.merge_subwords,
                layer=args.layer, head=args.head, dpi=args.dpi):
            if paths is None:
                print(f"{i}: {text}, no picture", file=sys.stderr)
            for path in paths or ():
                print(f"{path}\t{text}")
    if args.html:
        name = Path(args.model).resolve().name
        atomic_write_text(args.html, explorer_html(translator, texts, a, args.merge_subwords, name))
        print(f"{args.html}\texplorer of {len(texts)} sentence(s)")
    return 0


def cmd_serve(args) -> int:
    try:
        from .server import ServeLimits, serve
    except ImportError as e:
        raise CLIError(f"attendo serve needs FastAPI and uvicorn (missing: {e.name}); install "
                       "them with pip install 'attendo[serve]'") from None
    limits = ServeLimits.from_args(args)
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise CLIError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    serve(args.model, args.host, args.port, args.device, args.threads, args.max_batch,
          args.max_wait_ms, limits, args.log_level, args.unk_dict)
    return 0


def cmd_average(args) -> int:
    from .average import average_last

    out, chosen = average_last(args.model, args.last, args.output)
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
    from .export import export_model

    if not (Path(args.model) / "config.yaml").exists():
        raise CLIError(f"{args.model}: not a model directory (no config.yaml)")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise CLIError(f"{args.output}: exists and is not a directory")
    print(export_model(args.model, args.format, args.output, quantization=args.quantization,
                       opset=args.opset))
    return 0


def cmd_data(args) -> int:
    if args.name == "prepare":
        return cmd_data_prepare(args)
    if args.name in ("digits", "textlines"):
        return cmd_data_images(args)
    if not args.out or args.config:
        raise CLIError("usage: attendo data multi30k --out DIR [--from DIR] [--langs ...]")
    from .data.download import fetch_multi30k

    summary = fetch_multi30k(args.out, from_dir=Path(args.from_dir) if args.from_dir else None,
                             langs=tuple(args.langs))
    for name, n in summary.items():
        print(f"{Path(args.out) / name}\t{n} lines")
    return 0


def cmd_data_images(args) -> int:
    from .data import images

    if not args.out or (args.name == "textlines") != bool(args.config):
        raise CLIError("usage: attendo data digits --out DIR | attendo data textlines "
                       "TEXT_FILE --out DIR  [--sizes TRAIN DEV TEST] [--seed N]")
    sizes = dict(zip(("n_train", "n_dev", "n_test"), args.sizes)) if args.sizes else {}
    if args.name == "digits":
        lengths = dict(zip(("min_len", "max_len"), args.lengths or (1, 8)))
        m = images.make_digits(args.out, seed=args.seed, **sizes, **lengths,
                               test_lengths=args.test_lengths)
    else:
        m = images.make_textlines(args.out, args.config, seed=args.seed, **sizes)
    for split, n in m["counts"].items():
        print(f"{Path(args.out) / (split + '.tsv')}\t{n} images")
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


def build_parser():
    """The parser of every subcommand (:mod:`attendo.cli_args`), dispatching to this module."""
    from .cli_args import build_parser as build

    names = ("demo", "train", "translate", "score", "evaluate", "align", "align_prior",
             "attend", "serve", "average", "study", "export", "data")
    return build({name: globals()[f"cmd_{name}"] for name in names})


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
    try:
        return args.func(args)
    except AttendoError as e:  # a user error; any other exception is a bug: traceback
        problem = str(e)
    except OSError as e:  # IsADirectoryError, PermissionError, FileNotFoundError, a full disk...
        problem = os_error_text(e)
    except RuntimeError as e:  # torch.OutOfMemoryError is one; any other is a bug: traceback
        if not is_out_of_memory(e):
            raise
        problem = out_of_memory_text(e)
    except KeyboardInterrupt as e:  # a training's Interrupted says how to resume
        print(f"attendo {args.command}: interrupted" + (f" by {e}" if str(e) else ""),
              file=sys.stderr)
        return 143 if getattr(e, "signame", "") == "SIGTERM" else 130
    print(f"attendo {args.command}: error: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
