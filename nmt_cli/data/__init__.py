"""Corpora, tokenizers and token shards: everything between raw text and training batches."""
