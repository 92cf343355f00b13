"""Helpers shared by the tests (no tests here): everything is built locally, nothing downloaded.

- :mod:`.models`: tiny random mlx-lm model directories (one factory, presets in ``CONFIGS``),
  random LoRA/DoRA adapters, a float32 reference forward, a gemma3 with a trained BPE tokenizer;
- :mod:`.chat_tokenizers`: small byte-level BPE tokenizers with chat templates for the data tests;
- :mod:`.pairs`: random encoded preference pairs;
- :mod:`.gguf_files`: tiny GGUF files (random llama-style weights, SentencePiece/byte-level vocabularies);
- :mod:`.no_torch`: the torch blocker of the torch-free tests.
"""
