"""Writing GGUF files: our models, quantized by our own block quantizers, as llama.cpp reads them.

A GGUF file is a header, key/value metadata, a table of tensors (name, shape, type, offset) and
the tensor data, each tensor aligned to 32 bytes. The `gguf` package's `GGUFWriter` lays out those
bytes; what goes in is decided here:

* Names and layout of the Llama architecture (llama.cpp's `LLM_ARCH_LLAMA`), the inverse of
  pretrained/weights.py's reader:

      wte -> token_embd.weight          h.N.attn.wq/wk/wv/wo -> blk.N.attn_q/k/v/output.weight
      h.N.norm1.weight -> blk.N.attn_norm.weight     h.N.norm2.weight -> blk.N.ffn_norm.weight
      h.N.ffn.w1/w3/w2 -> blk.N.ffn_gate/up/down.weight
      norm_f.weight -> output_norm.weight            lm_head -> output.weight (untied only)

* The query and key rows of each head are permuted so that llama.cpp's RoPE, which rotates
  *adjacent* pairs (x0, x1), (x2, x3), ..., computes what our half-split RoPE computes on
  (x_i, x_{i + head_dim/2}). `permute_rope_rows` is the exact inverse of `unpermute_rope_rows`,
  which every reader (ours, transformers', llama.cpp's converter) applies. A model trained with
  interleaved RoPE (`rope_pairing="interleaved"`) is already in adjacent-pair order: its rows are
  written as they are.

* Tensor types. Weight matrices (`model.quantizable`: projections, embedding, LM head) in the
  requested type; norms stay F32, as llama.cpp keeps them. Q8_0/Q4_0/Q4_1 bytes come from OUR
  quantizers (gguf_blocks.py), which equal `gguf.quants` bit for bit. Quantizing the rows after the
  permutation gives the same blocks as before it (blocks run along a row, and a permutation only
  reorders rows), so a reader that unpermutes gets exactly `fake_quantize`'s matrices. A matrix
  whose rows are not a multiple of 32 long has no block form: it is stored F16, as llama.cpp's
  `convert_hf_to_gguf.py` does, and the caller is told which.

* Metadata: `llama.*` hyper-parameters, `general.file_type` (the format of the bulk of the
  weights) and the tokenizer (`tokenizer.ggml.*`, see `tokenizer_fields`).

Only Llama-architecture configs are written (RMSNorm, SwiGLU, RoPE, no biases, not MLA): GPT-2
style models (LayerNorm with biases, GELU, learned positions) would need llama.cpp's `gpt2`
architecture with fused QKV and biases, which transformers' GGUF reader and ours do not check
here; they are refused with one sentence (quantize them to a checkpoint directory instead).

The file is written to a temporary sibling and renamed into place: a crash leaves no partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import gguf_blocks
from .model import quantizable

# our format name -> (ggml type name, llama.cpp's LlamaFileType for "mostly this type")
GGUF_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "q4_0": ("Q4_0", 2), "q4_1": ("Q4_1", 3),
              "q8_0": ("Q8_0", 7)}
LAYER_NAMES = {
    "norm1.weight": "attn_norm.weight", "attn.wq": "attn_q.weight", "attn.wk": "attn_k.weight",
    "attn.wv": "attn_v.weight", "attn.wo": "attn_output.weight", "norm2.weight": "ffn_norm.weight",
    "ffn.w1": "ffn_gate.weight", "ffn.w3": "ffn_up.weight", "ffn.w2": "ffn_down.weight",
}
TOP_NAMES = {"wte": "token_embd.weight", "norm_f.weight": "output_norm.weight",
             "lm_head": "output.weight"}


def gguf_name(name: str) -> str:
    """Our parameter name -> llama.cpp's tensor name ('h.3.ffn.w1' -> 'blk.3.ffn_gate.weight')."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{LAYER_NAMES[rest]}"


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head from half-split order (HF, ours) to adjacent-pair order (llama.cpp):
    within a head of d rows, row k * d/2 + j goes to row 2j + k. The inverse of
    pretrained.weights.unpermute_rope_rows. Example, one head of 4 rows [a, b, c, d] (pairs
    (a, c), (b, d)) -> [a, c, b, d] (pairs (a, c), (b, d) adjacent)."""
    out_f = w.shape[0]
    hd = out_f // n_heads
    return w.reshape(n_heads, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(out_f, -1)


def check_llama(cfg) -> None:
    """One sentence if `cfg` is not a model the Llama architecture of GGUF can hold."""
    missing = [what for what, ok in (
        ("RMSNorm", cfg.norm == "rmsnorm"), ("SwiGLU", cfg.activation == "swiglu"),
        ("RoPE positions", cfg.position == "rope"), ("no biases", not cfg.bias),
        ("standard attention (not MLA)", cfg.attention != "mla")) if not ok]
    if missing:
        raise UserError(f"GGUF writing covers Llama-architecture models; this config lacks "
                        f"{', '.join(missing)}: quantize it to a checkpoint directory (an --out "
                        "without .gguf) or train a Llama-style preset (tiny, small, ...).")


def gguf_format(fmt: str) -> str:
    if fmt not in GGUF_TYPES:
        raise UserError(f"GGUF holds {', '.join(GGUF_TYPES)} here, not '{fmt}': write '{fmt}' "
                        "to a checkpoint directory (an --out without .gguf).")
    return fmt


def encode_tensor(name: str, w: np.ndarray, fmt: str) -> tuple[np.ndarray, str]:
    """(array for the writer, our type name) of one tensor: float32 for vectors and in f32
    files, float16 in f16 files and for rows that blocks of 32 do not divide, else the block
    bytes of our quantizer (uint8, (rows, blocks * type size))."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if fmt == "f32" or not quantizable(name, w):
        return w, "f32"
    if fmt == "f16" or w.shape[-1] % gguf_blocks.BLOCK:
        return w.astype(np.float16), "f16"
    return gguf_blocks.QUANTIZE[fmt](w), fmt


# ------------------------------------------------------------------------------ tokenizer
def gguf_fields_from(path) -> list[tuple]:
    """Every `tokenizer.*` key of an existing GGUF (tokens, merges, token types, bos/eos/pad
    ids, chat template, ...) as (key, value, value type, element type), their types kept
    exactly (e.g. UINT32 ids, INT32 token types), to copy into a new file."""
    from gguf import GGUFValueType

    from ..tokenizers.pretrained import open_gguf

    out = []
    for key, field in open_gguf(path).fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            out.append((key, field.contents(), vtype, sub))
    return out


def tokenizer_fields(tok, bos_id=None, eos_id=None, chat_template=None) -> list[tuple]:
    """GGUF tokenizer metadata for one of our tokenizers, or [] when it has no GGUF form.

    Byte-level BPE -> `tokenizer.ggml.model = gpt2`: tokens in GPT-2's byte-to-character form,
    merges as "left right" strings in rank order, token type 3 (control) for special tokens and
    1 (normal) otherwise, and the pre-tokenizer's llama.cpp name (gpt2, smollm, or llama-bpe for
    the GPT-4 pattern). A character tokenizer whose characters are all single bytes (ASCII) is
    the same thing with no merges: every character is a byte token. Other tokenizers: []."""
    from gguf import GGUFValueType as T

    from ..tokenizers.bytelevel import bytes_to_token
    from ..tokenizers.pretokenize import GPT2_PATTERN, GPT4_PATTERN

    kind = getattr(tok, "kind", None)
    if kind == "bpe":
        names = {(("split", GPT2_PATTERN),): "gpt2",
                 (("digits", True), ("split", GPT2_PATTERN)): "smollm",
                 (("split", GPT4_PATTERN),): "llama-bpe"}
        pre = names.get(tuple(tuple(s) for s in tok.stages))
        if pre is None:
            return []
        specials = {i: s for s, i in tok.special_tokens.items()}
        n = max([*tok.vocab, *specials]) + 1
        tokens = [specials[i] if i in specials else bytes_to_token(tok.vocab[i]) for i in range(n)]
        types = [3 if i in specials else 1 for i in range(n)]
        merges = [f"{bytes_to_token(tok.vocab[a])} {bytes_to_token(tok.vocab[b])}"
                  for a, b in tok.merges]
    elif kind == "char" and all(len(c.encode("utf-8")) == 1 for c in tok.chars):
        pre, tokens, types, merges = "default", [bytes_to_token(c.encode()) for c in tok.chars], \
            [1] * len(tok.chars), []
    else:
        return []
    out = [("tokenizer.ggml.model", "gpt2", T.STRING, None),
           ("tokenizer.ggml.pre", pre, T.STRING, None),
           ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
           ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
           ("tokenizer.ggml.add_bos_token", False, T.BOOL, None)]
    if merges:
        out.append(("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING))
    for key, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id)):
        if value is not None:
            out.append((f"tokenizer.ggml.{key}", int(value), T.UINT32, None))
    if chat_template:
        out.append(("tokenizer.chat_template", chat_template, T.STRING, None))
    return out


# ------------------------------------------------------------------------------ the file
def write_gguf(path, cfg, params: dict, fmt: str, *, tokenizer: list[tuple] = (),
               name: str = "llm-deeper model") -> dict:
    """Write `params` (our names, float arrays) of the Llama-style `cfg` as a GGUF file whose
    weight matrices are `fmt` (f32, f16, q8_0, q4_0, q4_1) and whose tokenizer metadata are the
    `tokenizer` fields (gguf_fields_from / tokenizer_fields). Atomic. Returns what was written:
    {path, file_bytes, weight_bytes, params, types: {type: tensor count}, f16_fallback: names}."""
    import gguf

    gguf_format(fmt)
    check_llama(cfg)
    path = Path(path)
    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(name)
    writer.add_file_type(GGUF_TYPES[fmt][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.norm_eps))
    for key, value, vtype, sub in tokenizer:
        writer.add_key_value(key, value, vtype, sub_type=sub)

    types: dict[str, int] = {}
    fallback, weight_bytes, n = [], 0, 0
    for ours, w in params.items():
        if ours.endswith((".lora_A", ".lora_B")):
            raise UserError(f"{ours} is a LoRA factor: merge the adapter first "
                            "(llm-deeper merge), then write the merged model.")
        w = np.asarray(w, dtype=np.float32)
        if ours.endswith(("attn.wq", "attn.wk")) and cfg.rope_pairing == "half":
            w = permute_rope_rows(w, cfg.n_head if ours.endswith("wq") else cfg.n_kv_head)
        data, stored = encode_tensor(ours, w, fmt)
        if stored == "f16" and fmt not in ("f16", "f32"):
            fallback.append(ours)
        raw = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[stored][0])
        writer.add_tensor(gguf_name(ours), data, raw_dtype=raw if data.dtype == np.uint8 else None)
        types[stored] = types.get(stored, 0) + 1
        weight_bytes += data.nbytes
        n += w.size
    _write_atomically(writer, path)
    return {"path": str(path), "file_bytes": path.stat().st_size, "weight_bytes": weight_bytes,
            "params": n, "types": types, "f16_fallback": fallback}


def _write_atomically(writer, path: Path) -> None:
    """Header, metadata, tensor table and data into a temporary sibling, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer.write_header_to_file(Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a model file is not
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
