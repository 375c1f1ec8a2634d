"""File names inside a `train_tokenizer` artifact dir (a light module: readers need no transformers import)."""

SP_MODEL_FILE = "tokenizer.model"  # sentencepiece model: the reference encoder, used by the shard stage
HF_TOKENIZER_FILE = "tokenizer.json"  # the same tokenizer for Hugging Face (`AutoTokenizer.from_pretrained(dir)`)
