"""Check refengine.convert against independent readers of the same GGUF; prints the numbers.

    .venv/bin/python tools/parity_tokenizer.py [GGUF] [--out DIR]

(a) token ids: our tokenizer.json vs a from-scratch llama.cpp-style BPE (written here, from the GGUF's tokens and
    merges) vs transformers' own GGUF tokenizer vs transformers loading our folder;
(b) every tensor of our model.safetensors vs the state_dict of transformers' GGUF loader;
(c) logits of transformers on our folder vs transformers on the GGUF;
(d) the same as (c) for tiny random GGUFs written here: llama with an untied head, qwen2 with q/k/v biases.

Needs torch + transformers (the `parity` extra); the engine itself never imports them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from refengine.convert import convert_gguf, default_gguf_path  # noqa: E402

SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345",
    "Pi is 3.14159 and e is 2.71828; 1000000 > 999999.",
    "x =  12 + 3   4",                        # whitespace runs before digits
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))",
    "    indented\tand\ttabbed  \n  trailing   ",
    "emoji: 🙂🚀👍🏽 and flags 🇫🇷",
    "中文测试：你好，世界。日本語のテキスト。한국어",
    "Ünïcödé café naïve Straße",
    "it's they're we've I'm you'll he'd",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|><|endoftext|>",
    "<|im_end|><|im_end|>text<|im_start|>",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "   ",
    "\n\n\n",
    "a\r\nb\r\n",
    "",
]


# ------------------------------------------------------------------ an independent tokenizer, llama.cpp style

def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ReferenceBPE:
    """llama.cpp's byte-level BPE for the `smollm` pre-tokenizer, in plain Python (slow, obviously correct)."""

    SPLITS = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]

    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int]):
        import regex
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.special = sorted((t for t, k in zip(tokens, token_types) if k == 3), key=len, reverse=True)
        self.patterns = [regex.compile(p) for p in self.SPLITS]
        self.alphabet = byte_alphabet()

    def _pieces(self, text: str) -> list[str]:
        # Each regex splits the pieces the previous one left, keeping unmatched text as its own piece.
        pieces = [text]
        for pattern in self.patterns:
            out = []
            for piece in pieces:
                start = 0
                for match in pattern.finditer(piece):
                    if match.start() > start:
                        out.append(piece[start:match.start()])
                    out.append(match.group())
                    start = match.end()
                if start < len(piece):
                    out.append(piece[start:])
            pieces = out
        return pieces

    def _bpe(self, word: str) -> list[int]:
        symbols = list(word)
        while len(symbols) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 60:
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return [self.ids[s] for s in symbols]

    def encode(self, text: str) -> list[int]:
        ids = []
        while text:
            # the earliest special token, longest first at equal position
            hits = [(text.find(s), -len(s), s) for s in self.special if s in text]
            if not hits:
                segment, special, text = text, None, ""
            else:
                at, _, special = min(hits)
                segment, text = text[:at], text[at + len(special):]
            for piece in self._pieces(segment):
                ids += self._bpe("".join(self.alphabet[b] for b in piece.encode()))
            if special is not None:
                ids.append(self.ids[special])
        return ids


# ---------------------------------------------------------------------------------------------------- checks

def check_tokenizer(gguf_path: Path, out_dir: Path) -> bool:
    from gguf import GGUFReader
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    fields = GGUFReader(str(gguf_path)).fields
    reference = ReferenceBPE(fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.merges"].contents(),
                             fields["tokenizer.ggml.token_type"].contents())
    ours = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    hf_gguf = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    hf_ours = AutoTokenizer.from_pretrained(str(out_dir))
    print("(a) tokenizer: ours vs reference BPE (llama.cpp rules) vs transformers-GGUF vs transformers-on-our-folder")
    all_ok, gguf_mismatches = True, 0
    for text in SAMPLES:
        ids = ours.encode(text, add_special_tokens=False).ids
        ref = reference.encode(text)
        tg = hf_gguf.encode(text, add_special_tokens=False)
        to = hf_ours.encode(text, add_special_tokens=False)
        round_trip = ours.decode(ids, skip_special_tokens=False) == text
        ok = ids == ref == to and round_trip
        all_ok &= ok
        gguf_mismatches += ids != tg
        note = "" if ids == tg else f"   transformers-GGUF differs: {tg}"
        print(f"  {'ok ' if ok else 'BAD'} {len(ids):3d} ids  round-trip={round_trip}  {text[:40]!r}{note}")
        if not ok:
            print(f"      ours={ids}\n      ref ={ref}\n      hf-ours={to}")
    print(f"  {len(SAMPLES)} strings: ours == reference == transformers(our folder): {all_ok}; "
          f"transformers-GGUF differs on {gguf_mismatches}")
    fuzz = random_strings(500)
    fuzz_bad = [t for t in fuzz if ours.encode(t, add_special_tokens=False).ids != reference.encode(t)]
    print(f"  {len(fuzz)} random strings (letters, digits, spaces, newlines, punctuation, CJK, emoji, specials): "
          f"ours != reference on {len(fuzz_bad)}{': ' + repr(fuzz_bad[:3]) if fuzz_bad else ''}")
    return all_ok and not fuzz_bad


def random_strings(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pieces = ["a", "Z", "word", " the", "é", "ß", "7", "42", " ", "  ", "\t", "\n", "\r\n", "'s", "'LL", ".", ",",
              "!?", "(", "]", "{}", "_", "-", "中文", "日本", "🙂", "👍🏽", "<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    return ["".join(rng.choice(pieces, size=rng.integers(1, 20))) for _ in range(count)]


def check_weights_and_logits(gguf_path: Path, out_dir: Path) -> bool:
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    hf_gguf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                   dtype=torch.float32).eval()
    ours = load_file(str(out_dir / "model.safetensors"))
    state = {k: v.float().numpy() for k, v in hf_gguf.state_dict().items()}
    if "lm_head.weight" not in ours:                  # tied: transformers lists it, we store it once
        ours_compared = {**ours, "lm_head.weight": ours["model.embed_tokens.weight"]}
    else:
        ours_compared = ours
    missing, extra = sorted(set(state) - set(ours_compared)), sorted(set(ours_compared) - set(state))
    worst = max((float(np.max(np.abs(ours_compared[k] - state[k]))), k) for k in state if k in ours_compared)
    shapes_ok = all(ours_compared[k].shape == state[k].shape for k in state if k in ours_compared)
    print(f"(b) weights: {len(ours)} tensors in ours, {len(state)} in transformers' state_dict; missing={missing} "
          f"extra={extra} shapes_ok={shapes_ok}; max |diff| = {worst[0]:.3g} ({worst[1]})")

    hf_ours = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        logits_gguf = hf_gguf(ids).logits[0].numpy()          # [T, V]
        logits_ours = hf_ours(ids).logits[0].numpy()          # [T, V]
        greedy_gguf = hf_gguf.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        greedy_ours = hf_ours.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    diff = float(np.max(np.abs(logits_gguf - logits_ours)))
    print(f"(c) logits over {ids.shape[1]} prompt tokens: max |ours - gguf| = {diff:.3g} "
          f"(logit scale {float(np.abs(logits_gguf).max()):.1f}); argmax equal at every position: "
          f"{bool((logits_gguf.argmax(-1) == logits_ours.argmax(-1)).all())}")
    print(f"    greedy 24 tokens equal: {greedy_gguf == greedy_ours}: {tokenizer.decode(greedy_ours)!r}")
    return not missing and not extra and shapes_ok and worst[0] < 1e-6 and diff < 1e-3 and greedy_gguf == greedy_ours


def write_random_gguf(path: Path, arch: str, rng) -> Path:
    """A 2-layer model with random F32 weights, in llama.cpp's layout (names; Q/K rows permuted for llama)."""
    import gguf

    def permute(w, n_head):                              # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    vocab, hidden, ffn, heads, kv_heads = 300, 32, 48, 4, 2
    alphabet = list(byte_alphabet().values())
    tokens = ["<|endoftext|>"] + alphabet + [f"tok{i}" for i in range(vocab - 1 - len(alphabet))]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (vocab - 1))
    writer.add_token_merges([])
    writer.add_eos_token_id(0)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    writer.add_tensor("token_embd.weight", r(vocab, hidden))
    writer.add_tensor("output_norm.weight", 1 + r(hidden))
    writer.add_tensor("output.weight", r(vocab, hidden))
    head_dim = hidden // heads
    for i in range(2):
        q, k = r(hidden, hidden), r(kv_heads * head_dim, hidden)
        if arch == "llama":
            q, k = permute(q, heads), permute(k, kv_heads)
        for name, w in (("attn_q.weight", q), ("attn_k.weight", k), ("attn_v.weight", r(kv_heads * head_dim, hidden)),
                        ("attn_output.weight", r(hidden, hidden)), ("ffn_gate.weight", r(ffn, hidden)),
                        ("ffn_up.weight", r(ffn, hidden)), ("ffn_down.weight", r(hidden, ffn)),
                        ("attn_norm.weight", 1 + r(hidden)), ("ffn_norm.weight", 1 + r(hidden))):
            writer.add_tensor(f"blk.{i}.{name}", w)
        if arch == "qwen2":
            for name, size in (("attn_q.bias", hidden), ("attn_k.bias", kv_heads * head_dim),
                               ("attn_v.bias", kv_heads * head_dim)):
                writer.add_tensor(f"blk.{i}.{name}", r(size))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def check_random_models() -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    ok = True
    rng = np.random.default_rng(0)
    for arch in ("llama", "qwen2"):
        with tempfile.TemporaryDirectory() as scratch:
            path = write_random_gguf(Path(scratch) / f"{arch}.gguf", arch, rng)
            out_dir = convert_gguf(path, Path(scratch) / "out", progress=False)
            hf_gguf = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=path.name, dtype=torch.float32).eval()
            hf_ours = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
            ids = torch.tensor([rng.integers(0, 300, size=20).tolist()])
            with torch.no_grad():
                diff = float((hf_gguf(ids).logits - hf_ours(ids).logits).abs().max())
            kind = type(hf_ours).__name__
            print(f"(d) random {arch} GGUF ({kind}): max |logits ours - gguf| over 20 tokens = {diff:.3g}")
            ok &= diff < 1e-4 and type(hf_gguf) is type(hf_ours)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", type=Path, help="GGUF file (default: the SmolLM2 one)")
    parser.add_argument("--out", type=Path, help="converted folder to check (default: convert into a temp dir)")
    args = parser.parse_args(argv)
    gguf_path = args.gguf or default_gguf_path()
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out or Path(scratch) / "model"
        if not (out_dir / "config.json").is_file():
            start = time.perf_counter()
            convert_gguf(gguf_path, out_dir, progress=False)
            print(f"converted {gguf_path.name} in {time.perf_counter() - start:.1f}s")
        ok = check_tokenizer(gguf_path, out_dir)
        ok &= check_weights_and_logits(gguf_path, out_dir)
    ok &= check_random_models()
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
