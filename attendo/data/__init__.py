"""Data layer: reading corpora, tokenizers, vocabularies, batching and toy tasks."""

from attendo.data.batching import Batch, BatchStream, collate, make_batches
from attendo.data.corpus import (
    CorpusError,
    ReadReport,
    TextError,
    clean_text,
    clean_texts,
    length_filter,
    read_lines,
    read_parallel,
)
from attendo.data.download import (
    MULTI30K_BASE_URL,
    MULTI30K_FILES,
    MULTI30K_LANGS,
    MULTI30K_SPLITS,
    DownloadError,
    fetch_multi30k,
)
from attendo.data.tokenizers import (
    TOKENIZER_KINDS,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    build_vocab,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from attendo.data.toy import TOY_TASKS, date_task, split_toy, toy_task
from attendo.data.vocab import Vocab

__all__ = [
    "Batch",
    "BatchStream",
    "CharTokenizer",
    "CorpusError",
    "DownloadError",
    "MULTI30K_BASE_URL",
    "MULTI30K_FILES",
    "MULTI30K_LANGS",
    "MULTI30K_SPLITS",
    "ReadReport",
    "SentencePieceTokenizer",
    "TOKENIZER_KINDS",
    "TOY_TASKS",
    "TextError",
    "Tokenizer",
    "Vocab",
    "WordTokenizer",
    "build_vocab",
    "clean_text",
    "clean_texts",
    "collate",
    "date_task",
    "fetch_multi30k",
    "length_filter",
    "load_tokenizer",
    "make_batches",
    "read_lines",
    "read_parallel",
    "save_tokenizer",
    "split_toy",
    "toy_task",
    "train_tokenizer",
]
