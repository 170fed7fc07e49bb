# %% [markdown]
# # Unigram vs BPE: SentencePiece's other model
#
# BPE (Sennrich et al. 2016, the previous lesson) builds its vocabulary *bottom up*: start from
# bytes and merge the most frequent pair, again and again. Encoding replays the merges.
#
# The **unigram language model** (Kudo 2018, arXiv 1804.10959; the default model of
# SentencePiece, Kudo & Richardson 2018, arXiv 1808.06226) goes *top down* and is probabilistic:
#
# * every piece x of the vocabulary has a probability p(x), and the p(x) sum to 1;
# * a segmentation s = (x_1, ..., x_k) of a string has probability P(s) = p(x_1) ... p(x_k)
#   (the pieces are independent: a *unigram* model);
# * encoding picks the most probable segmentation, argmax_s sum_i log p(x_i): dynamic
#   programming over the string, the **Viterbi** algorithm;
# * training starts from a large vocabulary (frequent substrings), fits the p(x) by EM
#   (expectation-maximisation over all segmentations of every word), then **prunes** the pieces
#   whose removal costs the corpus least likelihood, keeps the best 75 %, refits, and repeats
#   until the vocabulary has the size asked for. Single characters are never pruned, so every
#   string of known characters can still be segmented.
#
# We train both on the same Shakespeare at the same vocabulary size, segment by hand with the
# unigram model's own log-probabilities, and compare them on held-out text.
# Needs the corpus (`llm-deeper data pull shakespeare`) and HF `tokenizers` (the `hf` extra).

# %%
import json
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from llm_deeper.data import shakespeare
from llm_deeper.tokenizers import BPETokenizer
from llm_deeper.tokenizers.pretokenize import GPT4_PATTERN

from _common import OUT, QUICK, check

if not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper data pull shakespeare' first")
works = shakespeare.load_text("works")
cut = int(0.9 * len(works))  # the package's split: first 90 % train, last 10 % held out
train, held = works[:cut], works[cut:]
V = 512 if QUICK else 1024  # the vocabulary size both tokenizers get
if QUICK:
    train = train[:60_000]
held_lines = held.split("\n")[:2000] if QUICK else held.split("\n")
print(f"train on {len(train):,} characters; held out: {len(held_lines):,} lines; V = {V}")

# %% [markdown]
# ## 1. Train both on the same text at the same size
# BPE is the package's (GPT-4 pre-tokenization, 256 bytes + V - 256 merges). The unigram model
# is HF `tokenizers`' port of SentencePiece's trainer, with SentencePiece's conventions: a space
# becomes `▁`, every line starts with one, and pieces never cross the start of a word (the
# pre-tokenizer cuts before every `▁`), so `▁the` is a word start and `the` a word's middle.
# HF's `Metaspace` adds the leading `▁` only when a line does not start with a space already,
# which loses one space on lines indented by spaces; a `Prepend` normaliser always adds it, and
# the decoder strips exactly one, so decoding gives the text back exactly. The alphabet is the
# corpus's characters (as BPE has all 256 bytes: neither meets an unknown symbol here).
# `seed_size` (how many frequent substrings EM starts from; 1,000,000 by default) is 30,000 to
# keep the lesson short: on this corpus it compresses the same to 0.1 %.
#
# A third tokenizer separates the model from the pre-tokenization: a unigram model cut into
# pieces by the same GPT-4 pattern as BPE (spaces stay spaces, punctuation apart from words).

# %%
alphabet = sorted(set(works) - {"\n", " "}) + ["▁"]


def train_unigram(split_gpt4: bool) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    if split_gpt4:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁"),
                                               normalizers.Prepend("▁")])
        tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    trainer = trainers.UnigramTrainer(
        vocab_size=V, unk_token="<unk>", special_tokens=["<unk>"], show_progress=False,
        initial_alphabet=alphabet if not split_gpt4 else sorted(set(works) - {"\n"}),
        seed_size=30_000)
    tok.train_from_iterator(train.split("\n"), trainer)  # SentencePiece reads lines
    return tok


bpe = BPETokenizer.train(train, V, "gpt4")
uni = train_unigram(split_gpt4=False)
uni_g4 = train_unigram(split_gpt4=True)
check(f"all three vocabularies have exactly V = {V} ids",
      bpe.vocab_size == V and uni.get_vocab_size() == V and uni_g4.get_vocab_size() == V)

# %% [markdown]
# ## 2. The model is a table of log-probabilities
# The saved `tokenizer.json` holds the whole unigram model: `model.vocab` is a list of
# `[piece, log p(piece)]` (id = position; `<unk>` is id 0). No merges, no ranks.

# %%
uni.save(str(OUT / "unigram.json"))
saved = json.loads((OUT / "unigram.json").read_text(encoding="utf-8"))
check("the saved file is a Unigram model with V pieces",
      saved["model"]["type"] == "Unigram" and len(saved["model"]["vocab"]) == V)
logp = {piece: score for piece, score in saved["model"]["vocab"][1:]}  # without <unk>
L = max(map(len, logp))
print("most probable pieces:", [(p, round(s, 2)) for p, s in saved["model"]["vocab"][1:9]])
print(f"longest piece: {L} characters; sum of p = {sum(map(math.exp, logp.values())):.3f}")
# The sum is a little under 1: the library's M-step is a Bayesian variant of EM
# (digamma(count) - digamma(total) instead of log(count / total)), a prior that favours
# few pieces. Viterbi only compares sums of these scores, so nothing below depends on it.

# %% [markdown]
# ## 3. Viterbi by hand
# best[i] = the highest log-probability of any segmentation of the first i characters:
# best[i] = max over j < i with w[j:i] a piece of best[j] + log p(w[j:i]). A back-pointer
# remembers the j; following them from the end gives the segmentation. O(len(w) x L) steps.

# %%


def viterbi(w: str, logp: dict = logp) -> tuple[list[str], float]:
    best, back = [0.0] + [-math.inf] * len(w), [0] * (len(w) + 1)
    for i in range(1, len(w) + 1):
        for j in range(max(0, i - L), i):
            s = logp.get(w[j:i])
            if s is not None and best[j] + s > best[i]:
                best[i], back[i] = best[j] + s, j
    pieces, i = [], len(w)
    while i > 0:
        pieces.append(w[back[i]:i])
        i = back[i]
    return pieces[::-1], best[-1]


def words(line: str) -> list[str]:
    """The library's normaliser and pre-tokenizer: '▁' + spaces as '▁', cut before each '▁'."""
    s = "▁" + line.replace(" ", "▁")
    starts = [i for i, c in enumerate(s) if c == "▁"] + [len(s)]
    return [s[a:b] for a, b in zip(starts, starts[1:])]


cache: dict[str, list[str]] = {}


def best(w: str) -> list[str]:
    if w not in cache:
        cache[w] = viterbi(w)[0]
    return cache[w]


def segment(line: str) -> list[str]:
    return [p for w in words(line) for p in best(w)]


lines = [line for line in held_lines if line]  # an empty line has no tokens
n_lines = len(lines)
same = sum(segment(line) == e.tokens for line, e in zip(lines, uni.encode_batch(lines)))
print(f"Viterbi by hand = the library on {same:,} of {n_lines:,} held-out lines")
check("Viterbi by hand gives the library's segmentation on every held-out line",
      same == n_lines)

# %% [markdown]
# One word in numbers: the best segmentation against all characters, and against the greedy
# rule (take the longest piece that fits, left to right, as WordPiece does). Greedy is often the
# same; where it is not, Viterbi's is more probable, by construction.

# %%
example = "▁wherefore"
seg, score = viterbi(example)
print(f"{example}: Viterbi {'|'.join(seg)} (log P = {score:.2f})")


def greedy(w: str) -> list[str]:
    """Longest piece first, left to right (WordPiece's rule): possible here, not always best."""
    out, i = [], 0
    while i < len(w):
        j = max(j for j in range(i + 1, min(len(w), i + L) + 1) if w[i:j] in logp)
        out.append(w[i:j])
        i = j
    return out


log_p = lambda pieces: sum(logp[p] for p in pieces)  # log P of a segmentation
chars = list(example)
print(f"  characters {'|'.join(chars)}: log P = {log_p(chars):.2f}, "
      f"{math.exp(score - log_p(chars)):,.0f}x less likely")
check("the characters' segmentation scores below Viterbi's", log_p(chars) < score)
freq = Counter(w for line in lines for w in words(line))
greedy_of = {w: greedy(w) for w in freq}
differ = sorted((w for w in freq if greedy_of[w] != cache[w]), key=freq.get, reverse=True)
for w in differ[:3]:
    print(f"  {w}: greedy {'|'.join(greedy_of[w])} ({log_p(greedy_of[w]):.2f}), "
          f"Viterbi {'|'.join(cache[w])} ({log_p(cache[w]):.2f})")
print(f"greedy longest match differs from Viterbi on {len(differ):,} of {len(freq):,} "
      "distinct held-out words")
check("Viterbi's log P >= greedy's on every held-out word",
      all(log_p(greedy_of[w]) <= log_p(cache[w]) + 1e-9 for w in freq))

# %% [markdown]
# ## 4. Compression on held-out text
# Each line is encoded alone (as SentencePiece reads lines), without its newline.
# "ids used" counts the distinct ids the held-out text needs: byte-level BPE spends 256 ids on
# bytes, of which this ASCII corpus uses fewer than 100.

# %%
held_words = Counter(w for line in held_lines for w in line.split())
n_chars = sum(map(len, held_lines))
rows, per_word, lengths, unk = [], {}, {}, 0
for name, encode, decode, piece_str, word_pieces in [
    ("BPE (ours, GPT-4 split)", bpe.encode, bpe.decode,
     lambda ids: [bpe.decode([i]) for i in ids], lambda w: len(bpe.encode(" " + w))),
    ("unigram (SentencePiece-style)", lambda s: uni.encode(s).ids, uni.decode,
     lambda ids: [uni.id_to_token(i) for i in ids], lambda w: len(best("▁" + w))),
    ("unigram (GPT-4 split)", lambda s: uni_g4.encode(s).ids, uni_g4.decode,
     lambda ids: [uni_g4.id_to_token(i) for i in ids], lambda w: len(uni_g4.encode(" " + w))),
]:
    ids = [encode(line) for line in held_lines]
    check(f"{name}: decode(encode(line)) == line on every held-out line",
          all(decode(i) == line for i, line in zip(ids, held_lines)))
    n_tok = sum(map(len, ids))
    unk += sum(line.count(0) for line in ids) if name.startswith("unigram") else 0
    used = {i for line in ids for i in line}
    per_word[name] = Counter({k: 0 for k in range(1, 7)})
    for w, n in held_words.items():
        per_word[name][min(word_pieces(w), 6)] += n
    pieces = [p for line in ids for p in piece_str(line)]
    lengths[name] = Counter(map(len, pieces))
    n_space = sum(p.replace("▁", " ").strip() == "" for p in pieces)
    n_words = sum(held_words.values())
    rows.append((name, len(used), n_space, n_chars / n_tok, n_tok / n_lines,
                 sum(k * c for k, c in per_word[name].items()) / n_words,
                 per_word[name][1] / n_words))
check("the unigram models never fall back to <unk> (id 0) on held-out text", unk == 0)
print(f"\n| tokenizer (V = {V}) | ids used | space-only tokens | chars/token | tokens/line "
      "| tokens/word | words in 1 token |\n|---|---|---|---|---|---|---|")
for name, used, n_space, cpt, tpl, tpw, one in rows:
    print(f"| {name} | {used} | {n_space:,} | {cpt:.3f} | {tpl:.2f} | {tpw:.2f} | {one:.1%} |")

# %% [markdown]
# Reading the table (full mode, V = 1,024; docs/tokenization.md has the numbers): the
# SentencePiece-style unigram model keeps more words in one token and needs fewer tokens per
# word, but more per line: a piece never crosses a `▁`, so each space of a line's indentation
# is a token of its own (BPE's pattern keeps a run of spaces together), and so is a `▁` before a
# word that no `▁`-piece starts (SentencePiece's default normaliser would have squeezed runs of
# spaces into one and lost the exact text). Given BPE's own pre-tokenizer, the unigram model
# compresses less than BPE: on this corpus the merges pack more characters into a token than
# the pruned likelihood does. The unigram model's gain is elsewhere: a probability for every
# segmentation, so it can *sample* segmentations for training (subword regularisation).
#
# ## 5. The same words, side by side
# `|` separates tokens; BPE's pieces carry the space, unigram's the `▁`.

# %%
for w in ["wherefore", "thou'rt", "methinks", "Rosencrantz", "unfrequented", "o'erthrown",
          "honorificabilitudinitatibus"]:
    b = "|".join(bpe.decode([i]) for i in bpe.encode(" " + w))
    u = "|".join(best("▁" + w))
    print(f"  {w:>28}:  BPE {b!r:<34} unigram {u!r}")

# %% [markdown]
# ## 6. Figure: how long the tokens are, how many a word takes

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
width = 0.27
for k, name in enumerate(lengths):
    xs = range(1, 13)
    tot = sum(lengths[name].values())
    axes[0].bar([x + (k - 1) * width for x in xs], [lengths[name][x] / tot for x in xs],
                width, label=name)
    tot = sum(per_word[name].values())
    axes[1].bar([x + (k - 1) * width for x in range(1, 7)],
                [per_word[name][x] / tot for x in range(1, 7)], width, label=name)
axes[0].set_xlabel("token length (characters, with its space or ▁)")
axes[0].set_ylabel("share of held-out tokens")
axes[0].set_xticks(range(1, 13))
axes[1].set_xticks(range(1, 7), ["1", "2", "3", "4", "5", "6+"])
axes[1].set_xlabel("tokens per word")
axes[1].set_ylabel("share of held-out words")
for ax in axes:
    ax.legend(fontsize=8)
fig.suptitle(f"BPE vs unigram on held-out Shakespeare, V = {V}")
fig.tight_layout()
fig.savefig(OUT / "unigram_vs_bpe.png")
print(f"figure: {OUT / 'unigram_vs_bpe.png'}")

# %% [markdown]
# ## 7. Three questions about segmentations, answered
# 1. Replace `max` by `+` in Viterbi (counting paths: count[i] = sum of count[j]) to count
#    how many segmentations `▁wherefore` has with this vocabulary. Check your count by listing
#    them all with a recursive function.
# 2. Replace `max` by log-sum-exp (the *forward* algorithm, the E-step's first half) to get
#    log P(`▁wherefore`) summed over all segmentations. Which share of that probability does
#    the Viterbi segmentation hold?
# 3. The pruning criterion: remove one frequent piece (say the commonest piece of 3 or more
#    characters in the held-out segmentations) from `logp`, re-segment the held-out lines, and
#    measure how much their total log-probability drops and how many tokens it adds. Which
#    lines change?
#
# The answers below are each checked against an independent computation.

# %%


def all_segmentations(w: str) -> list[list[str]]:
    if not w:
        return [[]]
    return [[w[:i]] + rest for i in range(1, min(L, len(w)) + 1) if w[:i] in logp
            for rest in all_segmentations(w[i:])]


w = example
count, fwd = [1] + [0] * len(w), [0.0] + [-math.inf] * len(w)
for i in range(1, len(w) + 1):
    for j in range(max(0, i - L), i):
        if w[j:i] in logp and count[j]:  # count[j] = 0: no segmentation reaches j
            count[i] += count[j]
            a, b = fwd[i], fwd[j] + logp[w[j:i]]  # log(e^a + e^b), without overflow
            fwd[i] = max(a, b) + math.log1p(math.exp(-abs(a - b)))
listed = all_segmentations(w)
total = math.log(sum(math.exp(sum(logp[p] for p in s)) for s in listed))
print(f"1. {w} has {count[-1]:,} segmentations")
check("1. the path count equals the listed segmentations", count[-1] == len(listed))
print(f"2. log P({w}) = {fwd[-1]:.3f}; the Viterbi segmentation holds "
      f"{math.exp(score - fwd[-1]):.1%} of it")
check("2. the forward algorithm equals the sum over the listed segmentations",
      abs(fwd[-1] - total) < 1e-9)

seg_lines = [segment(line) for line in lines]
top = Counter(p for s in seg_lines for p in s if len(p) >= 3).most_common(1)[0][0]
pruned = {p: s for p, s in logp.items() if p != top}
resegmented = {w: viterbi(w, pruned)[0] for w in freq}
new_lines = [[p for w in words(line) for p in resegmented[w]] for line in lines]
before, after = sum(map(log_p, seg_lines)), sum(pruned[p] for s in new_lines for p in s)
print(f"3. without {top!r}: held-out log-likelihood {before:,.0f} -> {after:,.0f}, tokens "
      f"{sum(map(len, seg_lines)):,} -> {sum(map(len, new_lines)):,}; "
      f"{sum(a != b for a, b in zip(seg_lines, new_lines)):,} lines change")
check("3. removing a piece lowers the likelihood, and exactly the lines that used it change",
      after < before and [a != b for a, b in zip(seg_lines, new_lines)]
      == [top in s for s in seg_lines])

# %% [markdown]
# ## Exercises
# 1. Does any unigram piece hold a `▁` anywhere but at its start? Count them with
#    `sum("▁" in p[1:] for p in logp)`, and say why before you run it (answer: 0; a `▁` marks
#    where a word begins, and the trainer never lets a piece run across a word boundary).
# 2. Segment `▁Hamlet` with `viterbi` and check that its score is the sum of `logp` over the
#    pieces it returns (it must be, to the last digit: a segmentation's log-probability is the
#    sum of its pieces'). Then find a segmentation with a lower score by hand, e.g. all single
#    characters, and compare.
