# %% [markdown]
# # pandas: the corpus and the fine-tuning data as tables
#
# A **DataFrame** is a table: named columns, each a NumPy array of one type, and an *index*
# naming the rows. You rarely loop over its rows; you write one expression per column
# (`df.words / df.lines`), pick rows with a boolean mask (`df[df.kind == "poem"]`), sort them,
# and summarise groups of rows (`df.groupby("kind").words.sum()`). We look at the two data sets
# this course trains on: Shakespeare's works (one row per play or poem) and the tool-calling
# examples (one row per conversation). Every number is checked against plain Python.
# Needs the corpus: `llm-deeper data pull shakespeare`.

# %%
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.data import shakespeare
from llm_deeper.data.toolcalls import tool_calling_dataset

from _common import OUT, QUICK, check

if not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper data pull shakespeare' first")
pd.set_option("display.width", 100)

# %% [markdown]
# ## 1. A DataFrame from columns
# `pd.DataFrame({name: values, ...})` makes one column per list (a list of dicts, one per row,
# works too). New columns are computed by pandas column-wise: `df.text.str.len()` applies `len`
# to every string of the column at once (the `.str` accessor holds the string methods), and
# `np.where(condition, a, b)` picks per row. Which works are poems the package knows
# (`shakespeare.POEMS`); everything else is a play.

# %%
titles = shakespeare.titles()
df = pd.DataFrame({"title": titles, "text": [shakespeare.load_text(t) for t in titles]})
df["kind"] = np.where(df.title.isin(shakespeare.POEMS), "poem", "play")
df["characters"] = df.text.str.len()
df["words"] = df.text.str.split().str.len()
df["lines"] = df.text.str.count("\n") + 1
works = df.drop(columns="text")  # the same table without the (long) texts
print(works.head())
print(f"shape {works.shape} (rows, columns); column types:\n{works.dtypes}")

hamlet = shakespeare.load_text("hamlet")
row = works.set_index("title").loc["hamlet"]  # the index can be any column: here, the title
print(f"hamlet: {row.characters:,} characters, {row.words:,} words, {row.lines:,} lines")
check("pandas' word count of Hamlet = len(text.split())", row.words == len(hamlet.split()))
check("pandas' line count of Hamlet = len(text.splitlines())",
      row.lines == len(hamlet.splitlines()))
# the works corpus is every text joined by a blank line ("\n\n"): its length is the column's sum
# plus two characters per join
check("characters summed over the table = the works corpus",
      works.characters.sum() + 2 * (len(works) - 1) == len(shakespeare.load_text("works")))

# %% [markdown]
# ## 2. Filtering: a boolean mask picks rows
# `works.kind == "poem"` is a column of True/False; indexing the table with it keeps the rows
# where it is True. Masks combine with `&` (and), `|` (or), `~` (not), each side in brackets.

# %%
poems = works[works.kind == "poem"]
print(poems[["title", "words", "lines"]])
check("the poems are the package's POEMS", set(poems.title) == set(shakespeare.POEMS))
long_plays = works[(works.kind == "play") & (works.words > 30_000)]
print(f"{len(long_plays)} plays have more than 30,000 words")
check("the mask counts what a Python loop counts",
      len(long_plays) == sum(1 for t in titles if t not in shakespeare.POEMS
                             and len(shakespeare.load_text(t).split()) > 30_000))

# %% [markdown]
# ## 3. Sorting, and a new column from two others
# A column expression works on every row at once (NumPy underneath): no loop.

# %%
works["words_per_line"] = works.words / works.lines
top = works.sort_values("words", ascending=False)
print(top[["title", "kind", "words", "words_per_line"]].head(5).to_string(index=False))
longest = max(titles, key=lambda t: len(shakespeare.load_text(t).split()))
print(f"longest work: {top.title.iloc[0]}; shortest: {top.title.iloc[-1]}")
check("the first row after sorting is the longest work", top.title.iloc[0] == longest)
check("words_per_line of Hamlet = words / lines",
      np.isclose(works.set_index("title").words_per_line["hamlet"],
                 len(hamlet.split()) / len(hamlet.splitlines())))

# %% [markdown]
# ## 4. groupby: split the rows into groups, summarise each
# `groupby("kind")` makes one group per value of the column; `.agg` applies one summary per
# column. Do the poems have more words per line than the plays? (A play also has short lines:
# speakers' names, stage directions.) The table answers in one line.

# %%
by_kind = works.groupby("kind").agg(works=("title", "count"), words=("words", "sum"),
                                    mean_words=("words", "mean"),
                                    words_per_line=("words_per_line", "median"))
print(by_kind)
check("grouped word sum of the poems = a Python sum",
      by_kind.loc["poem", "words"] == sum(len(shakespeare.load_text(t).split())
                                          for t in shakespeare.POEMS))
# Group by something computed: the first word of the title (the Henrys and Richards gather)
series = works.groupby(works.title.str.split("_").str[0]).size().sort_values(ascending=False)
print("titles sharing a first word:\n", series[series > 1])
check("the group 'henry' = the titles starting with 'henry_' (seven plays)",
      series["henry"] == sum(t.startswith("henry_") for t in titles) == 7)

# %% [markdown]
# ## 5. Frequencies: value_counts
# A Series of words (lower case, letters and apostrophes) and `value_counts()` give the word
# frequencies, most frequent first: the same as `collections.Counter`. The count of the
# r-th most common word falls roughly like 1/r (Zipf's law): on log axes, a line of slope -1.

# %%
words = pd.Series(re.findall(r"[a-z']+", hamlet.lower()))
freq = words.value_counts()
print(f"{len(words):,} words, {len(freq):,} distinct; the ten most frequent:")
print(freq.head(10).to_string())
check("value_counts = collections.Counter", freq.to_dict() == dict(Counter(words)))
chars = pd.Series(list(hamlet)).value_counts()
print(f"{len(chars)} distinct characters; the five most frequent: "
      + ", ".join(f"{c!r} {n}" for c, n in chars.head(5).items()))
check("character counts = collections.Counter", chars.to_dict() == dict(Counter(hamlet)))
ranks = np.arange(10, 1001)  # a straight line on log axes: log count = slope x log rank + c
slope = np.polyfit(np.log(ranks), np.log(freq.values[ranks - 1]), 1)[0]
print(f"log-log slope of count against rank, ranks 10 to 1000: {slope:.2f}")
check("Zipf: the slope is close to -1", -1.3 < slope < -0.7)

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
colors = top.kind.map({"play": "tab:blue", "poem": "tab:orange"})
ax1.bar(range(len(top)), top.words / 1000, color=colors)
ax1.set(xlabel="works, longest first (orange: poems)", ylabel="thousand words",
        title="Words per work")
rank = np.arange(1, len(freq) + 1)
ax2.loglog(rank, freq.values, label="Hamlet")
ax2.loglog(rank, freq.values[9] * 10 / rank, "--", label="1 / rank")
ax2.set(xlabel="rank", ylabel="count", title="Word frequency by rank")
ax2.legend()
fig.tight_layout()
fig.savefig(OUT / "pandas_works.png")
print(f"figure: {OUT / 'pandas_works.png'}")

# %% [markdown]
# ## 6. The tool-calling examples as a table
# Each example is a conversation (`messages`), a task name and the tool calls it expects. We
# flatten what we want to look at into columns: the split, the task, the user's request and its
# length, how many messages and calls. Then one `groupby` counts examples per split and task.

# %%
n_train, n_val, n_test = (200, 20, 60) if QUICK else (1200, 50, 200)
data = tool_calling_dataset(n_train=n_train, n_val=n_val, n_test=n_test)
rows = [{"split": split, "task": ex["task"], "request": ex["messages"][1]["content"],
         "messages": len(ex["messages"]), "calls": len(ex["calls"])}
        for split, examples in data.items() for ex in examples]
tc = pd.DataFrame(rows)
tc["request_chars"] = tc.request.str.len()
print(tc.sample(5, random_state=0).to_string(index=False))

counts = tc.groupby(["split", "task"]).size().unstack(fill_value=0)  # rows: split, cols: task
print("examples per split and task:\n", counts)
check("each split's row sum = the number of examples in it",
      all(counts.loc[s].sum() == len(data[s]) for s in data))
check("train task counts = Counter over the examples",
      {k: v for k, v in counts.loc["train"].items() if v}
      == dict(Counter(ex["task"] for ex in data["train"])))

# %% [markdown]
# Requests that need no tool are short greetings and questions; the conversations without a
# tool call have 3 messages (system, user, assistant) instead of 5.

# %%
lengths = tc.groupby("task").request_chars.agg(["count", "mean", "min", "max"])
print("request length in characters, by task:\n", lengths.round(1))
calc = [len(ex["messages"][1]["content"]) for s in data for ex in data[s]
        if ex["task"] == "calculator"]
check("mean request length of the calculator task = a Python mean",
      np.isclose(lengths.loc["calculator", "mean"], sum(calc) / len(calc)))
check("no-tool conversations have 3 messages, the others 5",
      set(tc[tc.task == "none"].messages) == {3} and set(tc[tc.task != "none"].messages) == {5})
shared = set(tc[tc.split == "test"].request) & set(tc[tc.split == "train"].request)
print(f"test requests that also occur in train: {len(shared)}")
check("the test split shares no request with training", not shared)

# %% [markdown]
# ## Exercises
# 1. Which work has the most lines? Answer with one `sort_values` on `works`, and check it
#    against `max(titles, key=...)` over `shakespeare.load_text(t).splitlines()` as section 3
#    does for words. (You should find Hamlet, 6,769 lines; Antony and Cleopatra is second.)
# 2. How often does the word "hamlet" occur in Hamlet? Read it from `freq` and check it with
#    `Counter(words)["hamlet"]` (answer: 104 times).
# 3. Fit Zipf's slope over ranks 1 to 100 instead of 10 to 1,000 (change `ranks`). Is it
#    steeper or flatter? (Flatter: about -0.81 against -1.15; the most common words, "the",
#    "and", "to", are less frequent than a pure 1/r law predicts from the rest. The check's
#    range -1.3 to -0.7 still holds.)
