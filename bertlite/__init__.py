"""bertlite: BERT pre-training from scratch in PyTorch, for learning.

Data flows one way: WikiText files -> paragraphs -> vocabulary -> sentence pairs -> masked
examples -> padded batches -> model -> losses -> trainer. Each step has its own module.
"""
from .data import (BATCH_KEYS, Corpus, PretrainDataset, build_inputs, load_data_wiki,
                   load_pretrain_dataset, mask_tokens, next_sentence_pairs, sentence_order_pairs,
                   tokens_and_segments)
from .vocab import SPECIAL_TOKENS, Vocab
from .wikitext import download_wikitext2, parse_wikitext, read_text, read_wikitext

__version__ = "0.1.0"
