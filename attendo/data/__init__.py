"""Data layer: reading corpora, tokenizers, vocabularies, batching and toy tasks."""
