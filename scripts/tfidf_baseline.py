"""TF-IDF + logistic regression on the same seeded split speedtrain trains on: the reference to beat.

    python scripts/tfidf_baseline.py                   # HS chapters (default data)
    python scripts/tfidf_baseline.py --label section

C is chosen on the validation split; the test accuracy of that choice is reported.
"""

from __future__ import annotations

import argparse
import json
import time

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union

from speedtrain.data import sources
from speedtrain.data.splits import make_splits


def tfidf_reference(label: str = "chapter", split_seed: int = 42) -> dict:
    """Fit the reference on the train split, pick C on val; returns C, val/acc, test/acc and seconds."""
    started = time.perf_counter()
    dd = make_splits(sources.hscodes(label), 0.1, 0.1, seed=split_seed)
    best = None
    for c in (1.0, 3.0, 10.0, 30.0):
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        model = make_pipeline(features, LogisticRegression(C=c, max_iter=2000))
        model.fit(dd["train"]["text"], dd["train"]["label"])
        val = model.score(dd["validation"]["text"], dd["validation"]["label"])
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best
    test = model.score(dd["test"]["text"], dd["test"]["label"])
    return {"label": label, "C": c, "val/acc": round(val, 4), "test/acc": round(test, 4),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="chapter", choices=["chapter", "section"])
    parser.add_argument("--split-seed", type=int, default=42)
    args = parser.parse_args()
    print(json.dumps(tfidf_reference(args.label, args.split_seed)))


if __name__ == "__main__":
    main()
