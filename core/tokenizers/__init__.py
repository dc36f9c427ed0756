"""Tokenizer implementations: HF tokenizer.json and GGUF vocabularies, chat templates, bytes."""
