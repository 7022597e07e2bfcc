"""Loaders: Hugging Face directories and hub ids (safetensors), GGUF files and their tokenizers, the
shipped assets and the default model, and the LoRA adapter format."""
