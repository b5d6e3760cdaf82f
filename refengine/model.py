"""A loaded model folder: config, weights, tokenizer and chat template, kept apart as llama2.c keeps them."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import ModelConfig, load_config
from .backends import load_backend
from .forward import ModelWeights, load_model_weights
from .kvcache import KVCache
from .template import ChatTemplate
from .tokenizer import Tokenizer
from .weights import load_weights


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    config: ModelConfig
    weights: ModelWeights
    tokenizer: Tokenizer
    template: ChatTemplate | None
    eos_ids: frozenset[int]                  # any of these ends a generation
    backend: object                          # does the forward pass's arithmetic (refengine.backends)

    @property
    def vocab_size(self) -> int:
        """The token ids this model can take and produce: the tokenizer's ids that have a row in the
        weights. A padded vocabulary (Qwen2.5: config 151936, tokenizer 151665) has rows past the
        tokenizer's ids, which are no tokens: their logits are cut off, so they are never sampled."""
        return min(self.config.vocab_size, self.tokenizer.vocab_size)

    @property
    def xp(self):
        """The array module the weights and caches live in: numpy, or cupy on a GPU."""
        return self.backend.xp

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity, self.xp)

    def forward(self, tokens: list, caches: list[KVCache], *, all_logits: bool | list[bool] = False) -> np.ndarray:
        """Logits [M, vocab_size] as a float32 numpy array on the host, whatever the device."""
        logits = self.backend.forward(self.config, self.weights, tokens, caches, all_logits)
        return self.backend.to_host(logits[:, :self.vocab_size])     # [M, V_config] -> [M, V] on the host


def load_model(model_dir: Path, *, name: str | None = None, device: str = "cpu",
               max_context: int | None = None, backend: str | None = None, weights: str = "f32") -> Model:
    """`max_context` caps the context window below the model's own (vLLM's --max-model-len); `backend`
    (None: the device's default) and `weights` ("f32", or "q8" for int8 blocks) say who computes and how
    the weights are kept (`refengine.backends`)."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    if max_context is not None:
        config = replace(config, max_position_embeddings=min(config.max_position_embeddings, max_context))
    tokenizer = Tokenizer.from_dir(model_dir)
    compute = load_backend(backend, device, weights)
    arranged = compute.prepare(load_model_weights(config, load_weights(model_dir), compute.xp))
    template = None
    if tokenizer.chat_template:
        special = {"bos_token": tokenizer.special.bos, "eos_token": tokenizer.special.eos}
        template = ChatTemplate(tokenizer.chat_template, special)
    eos_ids = set(config.eos_token_ids)
    if tokenizer.special.eos is not None and tokenizer.token_id(tokenizer.special.eos) is not None:
        eos_ids.add(tokenizer.token_id(tokenizer.special.eos))
    token_ids = min(config.vocab_size, tokenizer.vocab_size)       # what Model.vocab_size answers
    eos_ids = {i for i in eos_ids if i < token_ids}
    return Model(name=name or model_dir.name, path=model_dir, config=config, weights=arranged,
                 tokenizer=tokenizer, template=template, eos_ids=frozenset(eos_ids), backend=compute)
