"""The tokenization figure (docs/tokenization.md): how many characters a token holds on held-out
Shakespeare, against the vocabulary size, for our byte-level BPE and a SentencePiece-style
unigram model (HF `tokenizers`' UnigramTrainer, set up as
lessons/01_foundations/04_unigram_vs_bpe.py sets it up: a space is `▁`, every line starts with
one, pieces never cross a word start)."""

from __future__ import annotations

from pathlib import Path

from . import figure, pyplot, save


def train_unigram(text: str, vocab_size: int, seed_size: int = 30_000):
    """A SentencePiece-style unigram tokenizer (HF `tokenizers`) trained on the lines of text;
    decoding gives each line back exactly."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁"),
                                           normalizers.Prepend("▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, unk_token="<unk>", special_tokens=["<unk>"], show_progress=False,
        initial_alphabet=sorted(set(text) - {"\n", " "}) + ["▁"], seed_size=seed_size)
    tok.train_from_iterator(text.split("\n"), trainer)
    return tok


@figure("bpe_vs_unigram.png", page="docs/tokenization.md", needs="shakespeare",
        what="characters per token on held-out Shakespeare against the vocabulary size: our BPE "
             "and a unigram model")
def bpe_vs_unigram(path: Path, quick: bool) -> None:
    from ..data import load_text
    from ..tokenizers import BPETokenizer

    works = load_text("works")
    cut = int(0.9 * len(works))  # the package's split: first 90 % train, last 10 % held out
    train, held = works[:cut], [line for line in works[cut:].split("\n") if line]
    sizes = (320, 512) if quick else (384, 512, 1024, 2048, 4096)
    if quick:
        train, held = train[:60_000], held[:500]
    n_chars = sum(map(len, held))
    bpe, uni = [], []
    for V in sizes:
        b = BPETokenizer.train(train, V, "gpt4")
        bpe.append(n_chars / sum(len(b.encode(line)) for line in held))
        u = train_unigram(train, V)
        uni.append(n_chars / sum(len(e.ids) for e in u.encode_batch(held)))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    ax.plot(sizes, bpe, "o-", label="byte-level BPE (ours, GPT-4 pre-tokenization)")
    ax.plot(sizes, uni, "s-", label="unigram, SentencePiece-style (HF tokenizers)")
    for V, b, u in zip(sizes, bpe, uni):  # each value beside its point, away from the other
        for value, other, colour in ((b, u, "C0"), (u, b, "C1")):
            ax.annotate(f"{value:.2f}", (V, value), xytext=(0, 7 if value >= other else -13),
                        textcoords="offset points", ha="center", fontsize=8, color=colour)
    ax.margins(y=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{V:,}" for V in sizes])
    ax.set_xlabel("vocabulary size V (ids)")
    ax.set_ylabel("characters per token (higher: shorter sequences)")
    ax.set_title(f"held-out Shakespeare: {len(held):,} lines, each encoded alone; trained on "
                 f"{len(train):,} characters", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Compression against vocabulary size: BPE and unigram")
    save(fig, path)
