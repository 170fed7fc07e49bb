# %% [markdown]
# # From PEFT to MLX: the same adapter under mlx-lm
#
# MLX is Apple's array framework; `mlx-lm` runs and fine-tunes LLMs with it (and serves them:
# `mlx_lm.server`). On Linux it runs on MLX's CPU backend (`pip install "mlx[cpu]" mlx-lm`), which
# is how this lesson runs anywhere. mlx-lm loads HF directories directly; a PEFT adapter needs
# converting, because the two libraries store the same update W + s B A differently:
#
#     PEFT:   lora_A.weight (r, in), lora_B.weight (out, r), scale alpha/r in adapter_config.json
#     mlx-lm: lora_a (in, r) = A^T, lora_b (r, out) = B^T, "scale" and "keys" in its config

# %%
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.pretrained import models

from _common import OUT, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")
try:
    import mlx_lm  # noqa: F401 (only: is it installed?)
except ImportError:
    raise SystemExit("this lesson needs mlx-lm: uv sync --extra mlx") from None

from safetensors.numpy import load_file

from llm_deeper.hf.mlx import mlx_greedy, peft_to_mlx_adapter
from llm_deeper.hf.models import hf_dir, load, random_lora

# %% [markdown]
# ## An adapter to convert
# A trained one works the same (`--adapter runs/tools-lora/adapter`); here a rank-8 adapter with
# small random A and B, so the lesson needs no training and the adapter visibly changes the text.

# %%
model, tok = load("smollm2-135m")
peft = random_lora(model, rank=8, alpha=16, targets=["q_proj", "v_proj"], std=0.04, seed=1)
peft.save_pretrained(OUT / "peft-adapter")
mlx_dir = peft_to_mlx_adapter(str(OUT / "peft-adapter"), str(OUT / "mlx-adapter"))

a = load_file(str(OUT / "peft-adapter" / "adapter_model.safetensors"))
b = load_file(str(Path(mlx_dir) / "adapters.safetensors"))
k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
print(f"PEFT {k.split('model.', 2)[-1]}: {a[k].shape} -> mlx model.layers.0.self_attn.q_proj."
      f"lora_a: {b['model.layers.0.self_attn.q_proj.lora_a'].shape}")
print(json.dumps(json.loads((Path(mlx_dir) / "adapter_config.json").read_text()), indent=1))
check("lora_a = A^T", (b["model.layers.0.self_attn.q_proj.lora_a"] == a[k].T).all())

# %% [markdown]
# ## The same greedy tokens in both libraries

# %%
prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                   add_generation_prompt=True)
           for q in ("What is the capital of France?", "Name a play by Shakespeare.")]
mlx_out = mlx_greedy(hf_dir("smollm2-135m"), prompts, 24, adapter_dir=mlx_dir)
hf_out = []
for p in prompts:
    enc = tok(p, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        g = peft.generate(**enc, max_new_tokens=24, do_sample=False, temperature=None, top_p=None,
                          top_k=None, pad_token_id=tok.eos_token_id)
    t = g[0, enc["input_ids"].shape[1]:].tolist()
    hf_out.append(t[:t.index(tok.eos_token_id)] if tok.eos_token_id in t else t)
for m, h in zip(mlx_out, hf_out):
    print("mlx-lm:      ", repr(tok.decode(m)))
    print("transformers:", repr(tok.decode(h)))
check("mlx-lm + converted adapter = transformers + PEFT", mlx_out == hf_out)

# %% [markdown]
# ## Serving it
# `mlx_lm.server --model <HF dir> --adapter-path <mlx adapter>` starts an OpenAI-compatible
# server (docs/hf.md); `llm-deeper models export-hf smollm2-135m --out DIR` writes the HF dir.

# %% [markdown]
# ## Exercises
# 1. What scale does mlx-lm's config get for `alpha = 16, rank = 8`, and where does PEFT keep the
#    same number? (Answer: 2.0 = alpha / r; PEFT keeps `lora_alpha` and `r` in
#    adapter_config.json and computes the scale itself.)
# 2. What shape has `lora_b` of `v_proj` in the mlx adapter? Predict from SmolLM2's GQA sizes,
#    then print it from `b` (answer: (8, 192): B^T of a (192, 8) B, since v_proj maps 576 -> 3 x
#    64 = 192).
# 3. How many parameters does this adapter hold? Predict from the shapes (rank 8 on q_proj,
#    576 -> 576, and v_proj, 576 -> 192, in 30 layers), then check with
#    `sum(v.size for v in a.values())` (answer: 30 x 8 x (1,152 + 768) = 460,800).
