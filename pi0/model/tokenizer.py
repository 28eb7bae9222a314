"""Prompt tokenizer: PaliGemma's sentencepiece model (`tokenizer.model`) or a `tokenizers` JSON (`tokenizer.json`).

The real path loads it from the checkpoint directory. Tests and the tiny demo build a small word-level tokenizer from
task instructions with `build_word_tokenizer` (no downloads needed); it has the same interface.

Prompt formats (PROMPT_FORMATS; the checkpoint's config decides, see `lerobot_layout.prompt_format_for`), each padded
with id 0 (masked out) or truncated to the token budget:
- "openpi": openpi's PaligemmaTokenizer for pi0, and for pi0.5 without state input (`pi05_libero`,
  `discrete_state_input=False`): `<bos>` + tokens of the cleaned task + tokens of "\\n" (tokenised apart).
- "lerobot_pi0": LeRobot's pi0 (`pi0_new_line_processor`, then its tokenizer step): `<bos>` + tokens of
  task + "\\n", the task as given (not cleaned), one string.
- "pi05_state": pi0.5 with the state in the prompt (LeRobot's `pi05_prepare_state_tokenizer_processor_step`, openpi's
  `discrete_state_input=True`): `<bos>` + tokens of "Task: {cleaned task}, State: {bins};\\nAction: ", the bins of
  the normalised state from `discretize_state`.
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


PROMPT_FORMATS = ("openpi", "lerobot_pi0", "pi05_state")
STATE_BINS = 256  # pi0.5: [-1, 1] cut into 256 bins


def clean_prompt(text: str) -> str:
    return text.strip().replace("_", " ").replace("\n", " ")


def check_prompt_format(name: str) -> str:
    if name not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {name!r} is unknown: use one of {', '.join(PROMPT_FORMATS)}")
    return name


def discretize_state(normalized_state: np.ndarray) -> np.ndarray:
    """pi0.5's state bins: `np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1` (below -1 -> -1, above 1 -> 255).
    Give it the state as the checkpoint's normaliser computed it (LeRobot: float32), so values on an edge stay there."""
    return np.digitize(np.asarray(normalized_state), np.linspace(-1, 1, STATE_BINS + 1)[:-1]).astype(np.int64) - 1


def pi0_prompt(task: str) -> str:
    """LeRobot's pi0 prompt: the task with a trailing newline (`pi0_new_line_processor`)."""
    return task if task.endswith("\n") else f"{task}\n"


def pi05_prompt(task: str, normalized_state: np.ndarray) -> str:
    """pi0.5's prompt with the state as text: "Task: {cleaned task}, State: {bins};\\nAction: "."""
    bins = " ".join(str(int(b)) for b in discretize_state(normalized_state))
    return f"Task: {clean_prompt(task)}, State: {bins};\nAction: "


def build_prompt(prompt_format: str, task: str, normalized_state: np.ndarray | None = None) -> str:
    """The text the tokenizer receives. "openpi" keeps the task as is (PromptTokenizer.encode cleans it and adds the
    newline as its own tokens); "pi05_state" needs the normalised state (the checkpoint's state dims, unpadded)."""
    if prompt_format == "openpi":
        return task
    if prompt_format == "lerobot_pi0":
        return pi0_prompt(task)
    if prompt_format == "pi05_state":
        if normalized_state is None:
            raise ValueError("the pi05_state prompt needs the normalised state; pass it to build_prompt")
        return pi05_prompt(task, normalized_state)
    raise ValueError(f"prompt format {prompt_format!r} is unknown: use one of {', '.join(PROMPT_FORMATS)}")


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
        for name in (SP_NAME, JSON_NAME):
            if (d / name).is_file():
                return cls.from_file(d / name)
        raise FileNotFoundError(
            f"{d}: no {SP_NAME} or {JSON_NAME}; copy PaliGemma's tokenizer.model (openpi: "
            f"big_vision/paligemma_tokenizer.model) into the checkpoint directory"
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptTokenizer":
        """tokenizer.model (sentencepiece) or tokenizer.json (`tokenizers`)."""
        path = Path(path)
        if path.name == SP_NAME:
            import sentencepiece as spm

            return cls(spm.SentencePieceProcessor(model_file=str(path)), "sentencepiece", path)
        if path.name == JSON_NAME:
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)), "tokenizers", path)
        raise ValueError(f"{path}: not a tokenizer file; use PaliGemma's {SP_NAME} (or a {JSON_NAME})")

    @classmethod
    def from_path(cls, path: str | Path) -> "PromptTokenizer":
        """A tokenizer directory (as `from_dir`) or the tokenizer.model / tokenizer.json file itself."""
        p = Path(path)
        if p.is_file():
            return cls.from_file(p)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such tokenizer directory or file; point at PaliGemma's {SP_NAME}")
        return cls.from_dir(p)

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

    def encode(self, prompt: str, prompt_format: str = "openpi") -> list[int]:
        """Ids of a prompt built by `build_prompt(prompt_format, ...)`, with <bos>."""
        if prompt_format == "openpi":
            return [self._bos_id(), *self._encode_raw(clean_prompt(prompt)), *self._encode_raw(NEWLINE)]
        check_prompt_format(prompt_format)
        return [self._bos_id(), *self._encode_raw(prompt)]  # the whole text at once, as LeRobot's tokenizer step

    def tokenize(self, prompts: Sequence[str], max_len: int, prompt_format: str = "openpi") -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(prompts), max_len), dtype=np.int64)
        mask = np.zeros((len(prompts), max_len), dtype=bool)
        for i, p in enumerate(prompts):
            toks = self.encode(p, prompt_format)
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
