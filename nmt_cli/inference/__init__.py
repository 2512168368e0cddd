"""Everything that turns a checkpoint into translations, written once over two engines.

- `translator.py`: the driver (normalise, encode, drop empty lines, sort, batch, restore
  order, stream) and the `Engine` interface it drives;
- `torch_engine.py`: our models and search, from checkpoints; `cpu_linear.py`: its CPU fast
  paths (oneDNN-prepacked and int8 linear layers);
- `ctranslate2.py`: the CTranslate2 engine; `ct2_format.py`: the exported directory's format,
  read by that engine and written by `export.py`;
- `engines.py`: choosing an engine (`load_translator`);
- `alignment.py`: attention as word alignments, and unknown-word replacement.
"""
