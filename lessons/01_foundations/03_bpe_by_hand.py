# %% [markdown]
# # Byte-pair encoding by hand
#
# Start from bytes; count adjacent pairs; merge the most frequent into a new token; repeat.
# We learn a few merges on one sentence by hand, then check the package learns the same ones.

# %%
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.tokenizers import BPETokenizer
from llm_deeper.tokenizers.pretokenize import GPT4_PATTERN, PreTokenizer

from _common import check

text = "the cat sat on the mat; the rat sat on the hat"
pieces = PreTokenizer([("split", GPT4_PATTERN)])(text)
print("pre-tokenized pieces:", pieces)
words = Counter(tuple(p.encode()) for p in pieces)

# %% [markdown]
# ## Three merges, one at a time
# Ties (equal counts) go to the smallest pair of ids: the rule the package documents.

# %%
vocab = {i: bytes([i]) for i in range(256)}
merges = []
for step in range(3):
    pairs = Counter()
    for w, n in words.items():
        for pair in zip(w, w[1:]):
            pairs[pair] += n
    best = min(pairs, key=lambda p: (-pairs[p], p))
    new_id = 256 + step
    vocab[new_id] = vocab[best[0]] + vocab[best[1]]
    merges.append(best)
    print(f"merge {step}: {vocab[best[0]]!r} + {vocab[best[1]]!r} -> {vocab[new_id]!r} "
          f"(seen {pairs[best]} times)")
    merged = Counter()
    for w, n in words.items():
        out, i = [], 0
        while i < len(w):
            if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                out.append(new_id)
                i += 2
            else:
                out.append(w[i])
                i += 1
        merged[tuple(out)] += n
    words = merged

tok = BPETokenizer.train(text, 259, "gpt4")
check("the package learns the same three merges", tok.merges == merges)
ids = tok.encode(text)
print(f"{len(text.encode())} bytes -> {len(ids)} tokens:", [tok.decode([i]) for i in ids])
check("decode(encode(text)) == text", tok.decode(ids) == text)

# %% [markdown]
# ## On Shakespeare (if pulled): how the compression grows with the vocabulary

# %%
from llm_deeper.data import shakespeare

if shakespeare.is_cached():
    sonnets = shakespeare.load_text("sonnets")
    for size in (256 + 64, 512, 1024):
        t = BPETokenizer.train(sonnets, size, "gpt4")
        n = len(t.encode(sonnets))
        print(f"  vocab {size:>5}: {len(sonnets.encode()) / n:.2f} bytes per token")
else:
    print("(run 'llm-deeper data pull shakespeare' to see this on the sonnets)")

# %% [markdown]
# ## Exercises
# 1. Predict the fourth merge from the pieces after three merges (count the pairs yourself),
#    then run four: `range(4)` in the loop and `BPETokenizer.train(text, 260, "gpt4")`. The check
#    tells you whether the package agrees (answer: `b' '` + `b'the'` -> `b' the'`).
# 2. How many tokens does the sentence take after 3, 4 and 5 merges? (Answer: 32, 29, 27; each
#    merge saves as many tokens as the pair occurred, and the counts fall.)
# 3. Why does `" the"` become one token but `"the"` at the start of the sentence stays `the`?
#    (The pre-tokenizer keeps the space with the word that follows it: `" the"` and `"the"` are
#    different pieces, and merges never cross pieces.)
