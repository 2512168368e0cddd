"""The special token ids of every vocabulary: SentencePiece is trained to give them these
ids (`data/tokenizer.py`), the models pad with PAD, search starts at BOS and ends at EOS, and
the checkpoint records them."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
