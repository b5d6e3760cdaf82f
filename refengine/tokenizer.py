"""Text ↔ token ids, with the `tokenizers` library, and the exact bytes behind every token.

`token_bytes[i]` is what token i adds to the output text, as UTF-8 bytes (b"" for special tokens). The
incremental detokenizer, logprobs' `bytes` and the constrainer all work on it, so streamed text, logprobs
and constraints agree byte for byte.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as HFTokenizer

from .config import ModelLoadError
from .lru import LRUCache

DERIVED_TABLES = 64


@lru_cache(maxsize=1)
def _byte_level_decoding() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: each printable stand-in character → the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    stand_ins = printable[:]
    offset = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            stand_ins.append(256 + offset)
            offset += 1
    return {chr(c): b for b, c in zip(printable, stand_ins)}


def _decoder_types(spec: dict | None) -> set[str]:
    if not spec:
        return set()
    if spec.get("type") == "Sequence":
        return {t for d in spec.get("decoders", []) for t in _decoder_types(d)}
    return {spec.get("type")}


def _token_bytes(token: str, decoders: set[str]) -> bytes:
    if "ByteLevel" in decoders:
        table = _byte_level_decoding()
        return bytes(table[c] for c in token) if all(c in table for c in token) else token.encode()
    if "ByteFallback" in decoders and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    if "Metaspace" in decoders or "Replace" in decoders:
        return token.replace("▁", " ").encode()
    return token.encode()


def _never_prepend(spec: dict | None) -> None:
    """Metaspace pre-tokenizers with prepend_scheme "first", in place, made to prepend nothing."""
    if not spec:
        return
    if spec.get("type") == "Sequence":
        for inner in spec.get("pretokenizers", []):
            _never_prepend(inner)
    elif spec.get("type") == "Metaspace" and spec.get("prepend_scheme") == "first":
        spec["prepend_scheme"] = "never"


@dataclass(frozen=True)
class SpecialTokens:
    bos: str | None
    eos: str | None
    add_bos: bool


def _token_string(value) -> str | None:
    """tokenizer_config.json gives special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, tokenizer_json: Path, tokenizer_config: dict):
        self._hf = HFTokenizer.from_file(str(tokenizer_json))
        spec = json.loads(Path(tokenizer_json).read_text())
        decoders = _decoder_types(spec.get("decoder"))
        self.special_ids = frozenset(t["id"] for t in spec.get("added_tokens", []) if t.get("special"))
        vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self.token_strings = [self._hf.id_to_token(i) or "" for i in range(vocab_size)]
        self.token_bytes = [b"" if i in self.special_ids else _token_bytes(s, decoders)
                            for i, s in enumerate(self.token_strings)]
        self.special = SpecialTokens(
            bos=_token_string(tokenizer_config.get("bos_token")),
            eos=_token_string(tokenizer_config.get("eos_token")),
            add_bos=bool(tokenizer_config.get("add_bos_token", False)))
        self.chat_template = tokenizer_config.get("chat_template")
        strings = sorted({self.token_strings[i] for i in self.special_ids if self.token_strings[i]},
                         key=len, reverse=True)
        # any special token's string, longest first (None without any): what `encode` reads as a control token
        self.special_pattern = re.compile("|".join(map(re.escape, strings))) if strings else None
        self._mask = next(c for c in "\ue000\ue001\ue002\ufffc" if not any(c in s for s in strings))
        self._derived = LRUCache(DERIVED_TABLES)
        self._text_tokenizers: dict[bool, HFTokenizer] = {}

    def derived(self, key, compute):
        """A table computed from this vocabulary (DRY breakers, tool formats, ...), kept for the last
        DERIVED_TABLES keys used (clients choose some keys, e.g. their DRY sequence breakers)."""
        return self._derived.get_or_build(key, compute)

    @classmethod
    def from_dir(cls, model_dir: Path) -> "Tokenizer":
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{model_dir} has no tokenizer.json")
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(path, config)

    @property
    def vocab_size(self) -> int:
        return len(self.token_strings)

    def token_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = False,
               literal_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of `text`; special-token strings in it become their ids (as in a rendered chat prompt),
        except inside `literal_spans` (character ranges [start, end), e.g. a message's content), where they
        are plain text, tokenized as if the vocabulary had no such special token."""
        if literal_spans:
            ids = self._encode_with_literals(text, literal_spans)
        else:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        bos_id = self.token_id(self.special.bos) if (add_bos and self.special.bos) else None
        if bos_id is not None and (not ids or ids[0] != bos_id):
            ids = [bos_id] + ids
        return ids

    def _encode_with_literals(self, text: str, literal_spans: Sequence[tuple[int, int]]) -> list[int]:
        """The special tokens `text` really has are found in a copy whose literal spans are masked (a
        character no special token contains, one for one, so offsets stay those of `text`). Between two of
        them the text is one segment, tokenized on its own as `encode` always does; a segment that holds a
        literal span is tokenized with special-token strings as text, every other keeps its ids as they are."""
        characters = list(text)
        for start, end in literal_spans:
            characters[start:end] = self._mask * (end - start)
        masked = "".join(characters)
        encoding = self._hf.encode(masked, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        controls = [i for i, (token, (start, end)) in enumerate(zip(ids, offsets))    # not an <unk> of the mask
                    if token in self.special_ids and self.token_strings[token] in masked[start:end]]
        out: list[int] = []
        segment_start, first_token = 0, 0
        for i in controls + [len(ids)]:
            segment_end = offsets[i][0] if i < len(ids) else len(text)
            if any(start < segment_end and end > segment_start for start, end in literal_spans):
                out += self._text_tokenizer(at_start=segment_start == 0).encode(
                    text[segment_start:segment_end], add_special_tokens=False).ids
            else:
                out += ids[first_token:i]
            if i < len(ids):
                out.append(ids[i])
                segment_start, first_token = offsets[i][1], i + 1
        return out

    def _text_tokenizer(self, at_start: bool) -> HFTokenizer:
        """A copy of the tokenizer that reads special-token strings as text (a copy, since
        `encode_special_tokens` is a setting of the tokenizer object, which other threads use meanwhile).
        A segment after the first is not the beginning of the text: where a Metaspace pre-tokenizer adds
        its "▁" only at the beginning (prepend_scheme "first"), the copy for later segments adds none."""
        def build() -> HFTokenizer:
            spec = json.loads(self._hf.to_str())
            if not at_start:
                _never_prepend(spec.get("pre_tokenizer"))
            tokenizer = HFTokenizer.from_str(json.dumps(spec))
            tokenizer.encode_special_tokens = True
            return tokenizer
        if at_start not in self._text_tokenizers:          # two at most: not in `derived`, which clients fill
            self._text_tokenizers[at_start] = build()
        return self._text_tokenizers[at_start]

    def decode(self, ids: list[int]) -> str:
        """The text of `ids` without special tokens: the concatenation of their bytes."""
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
