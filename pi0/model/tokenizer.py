"""Prompt tokenizer: PaliGemma's sentencepiece model (`tokenizer.model`) or a `tokenizers` JSON (`tokenizer.json`).

The real path loads it from the checkpoint directory. Tests and the tiny demo build a small word-level tokenizer from
task instructions with `build_word_tokenizer` (no downloads needed); it has the same interface.

Prompt format (openpi's PaligemmaTokenizer for pi0): `<bos>` + tokens of the cleaned prompt + tokens of "\\n",
padded with id 0 (masked out) or truncated to the token budget.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

SP_NAME = "tokenizer.model"
JSON_NAME = "tokenizer.json"
BOS, PAD, UNK, NEWLINE = "<bos>", "<pad>", "<unk>", "\n"


def clean_prompt(text: str) -> str:
    return text.strip().replace("_", " ").replace("\n", " ")


class PromptTokenizer:
    """encode(text) -> ids with BOS; tokenize(texts, max_len) -> (ids [B, L] int64, mask [B, L] bool)."""

    def __init__(self, backend: object, kind: str, source: Path | None = None):
        self._backend = backend
        self.kind = kind  # "sentencepiece" or "tokenizers"
        self.source = source

    # ---- construction ----
    @classmethod
    def from_dir(cls, directory: str | Path) -> "PromptTokenizer":
        d = Path(directory)
        if (d / SP_NAME).is_file():
            import sentencepiece as spm

            return cls(spm.SentencePieceProcessor(model_file=str(d / SP_NAME)), "sentencepiece", d / SP_NAME)
        if (d / JSON_NAME).is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(d / JSON_NAME)), "tokenizers", d / JSON_NAME)
        raise FileNotFoundError(
            f"{d}: no {SP_NAME} or {JSON_NAME}; copy PaliGemma's tokenizer.model (openpi: "
            f"big_vision/paligemma_tokenizer.model) into the checkpoint directory"
        )

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.kind == "tokenizers":
            out = d / JSON_NAME
            self._backend.save(str(out))
            return out
        out = d / SP_NAME
        if self.source is not None and self.source.resolve() != out.resolve():
            shutil.copyfile(self.source, out)
        elif self.source is None:
            out.write_bytes(self._backend.serialized_model_proto())
        return out

    # ---- ids ----
    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return int(self._backend.get_piece_size())
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def _bos_id(self) -> int:
        if self.kind == "sentencepiece":
            return int(self._backend.bos_id())
        tid = self._backend.token_to_id(BOS)
        if tid is None:
            raise KeyError(f"{self.source or 'tokenizer'}: token '{BOS}' missing; add it as a special token")
        return int(tid)

    def _encode_raw(self, text: str) -> list[int]:
        if self.kind == "sentencepiece":
            return list(self._backend.encode(text))
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def encode(self, prompt: str) -> list[int]:
        return [self._bos_id(), *self._encode_raw(clean_prompt(prompt)), *self._encode_raw(NEWLINE)]

    def tokenize(self, prompts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(prompts), max_len), dtype=np.int64)
        mask = np.zeros((len(prompts), max_len), dtype=bool)
        for i, p in enumerate(prompts):
            toks = self.encode(p)
            if len(toks) > max_len:
                log.warning("prompt of %d tokens truncated to %d: %r", len(toks), max_len, p)
                toks = toks[:max_len]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = True
        return ids, mask


def build_word_tokenizer(instructions: Iterable[str]) -> PromptTokenizer:
    """A word-level `tokenizers` tokenizer over the words of `instructions` (lower-cased), ids: <pad>=0, <bos>=1,
    <unk>=2, "\\n"=3, then words in sorted order. For tests and tiny demos only: a real checkpoint needs its own."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = sorted({w for text in instructions for w in clean_prompt(text).lower().replace(",", " , ").split()})
    vocab = {PAD: 0, BOS: 1, UNK: 2, NEWLINE: 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens([PAD, BOS, UNK, NEWLINE])
    return PromptTokenizer(tok, "tokenizers")
