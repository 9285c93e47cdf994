"""A byte-level BPE tokenizer trained on the training documents, saved as a transformers tokenizer.

Byte-level BPE (as in GPT-2/Pythia) covers every string without an unknown token and without any
normalisation, so the bytes a model is scored on are exactly the bytes of the text, which is what
``bits_per_byte`` needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

#: Pythia's special tokens: one token ends (and, as lm-eval's prefix, starts) a document.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with ``vocab_size`` entries (special tokens included) on ``texts``.

    The ``tokenizers`` trainer is deterministic for the same input order, so the same documents give
    the same vocabulary and merges.
    """
    backend = Tokenizer(models.BPE())
    # add_prefix_space=False: a document's first word is encoded as written, as in Pythia.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,  # lm-eval uses bos as the prefix of rolling windows; training starts docs after it
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,  # never produced by byte-level BPE; set so tools that ask for it find one
        pad_token=PAD_TOKEN,
        model_max_length=1_000_000,  # the model's limit is in its config; avoid truncation warnings here
        clean_up_tokenization_spaces=False,  # keep decoded text byte-identical
    )
    logger.info("trained byte-level BPE tokenizer with %d tokens", len(tokenizer))
    return tokenizer


def encode_documents(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[int]:
    """One token stream: every document followed by the end-of-text token (how the model is trained)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos token")
    # The backend's batch encoder runs in parallel and adds no special tokens (there is no post-processor).
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    stream: list[int] = [eos]  # the first document, like every later one, follows an end-of-text token
    for encoding in encodings:
        stream.extend(encoding.ids)
        stream.append(eos)
    return stream


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """``save_pretrained`` plus a portable ``tokenizer_class``.

    transformers 5 records its internal class name ``TokenizersBackend``, which transformers 4 cannot
    resolve; ``PreTrainedTokenizerFast`` loads the same ``tokenizer.json`` under both.
    """
    tokenizer.save_pretrained(path)
    config_path = Path(path) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
