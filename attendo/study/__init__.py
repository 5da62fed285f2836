"""``attendo study STUDY.yaml``: train variants of one config under one budget and seed,
evaluate each on one test set, and write a report of measured numbers.

A study file::

    name: "Multi30k de-en: attention, coverage, copy"   # the report's title
    base: configs/multi30k_rnn.yaml      # a train config (path or inline mapping)
    overrides: [train.valid_every=250]   # dotted overrides for every variant
    seed: 1                              # train.seed of every variant
    budget: {minutes: 5}                 # and/or steps: N; replaces train.max_* of the base
    out_dir: runs/study_multi30k
    test: {src: data/multi30k/test_2016_flickr.de, ref: data/multi30k/test_2016_flickr.en}
    variants:
      - {name: none, overrides: [model.attention=none]}
      - {name: additive, overrides: []}
      # a finished variant of another study with exactly this config: evaluated, not retrained
      - {name: bpe, overrides: [data.tokenizer=bpe], trained: runs/other_study/models/bpe}

Paths are relative to the current directory, as in ``attendo train``. The study writes::

    OUT/models/NAME/      each variant's model directory (+ study_done.json, study_eval.json,
                          study_test.hyp); for a ``trained`` variant only the last two
    OUT/report/           report.md, results.json, PNG plots, configs/NAME.yaml, configs/study.yaml

Running it again skips finished variants (``study_done.json``) and their evaluation
(``study_eval.json`` for the same test settings), resumes an interrupted one from its
``last.safetensors``, and rewrites the report. The report states measured numbers only;
its interpretation section is left for a person to write.
"""

from .report import bootstrap_against_first
from .runs import run_study
from .spec import Study, StudyError, describe, load_study

__all__ = ["Study", "StudyError", "bootstrap_against_first", "describe", "load_study",
           "run_study"]
