"""A small real data set for the small-data checks: the 5 largest HS chapters, 1,649 short product descriptions.

    python scripts/small_data.py /tmp/hs5.csv
    python train.py +experiment=distill data=files data.train=/tmp/hs5.csv model=static

Machinery (84) vs electrical machinery (85) and organic (29) vs inorganic chemicals (28) are close pairs; fish (03)
is the easy fifth. Columns ``text`` and ``label`` (the chapter); ``data=files`` carves a seeded 80/10/10 split.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter

from speedtrain.data import sources


def small_rows(classes: int = 5) -> list[tuple[str, str]]:
    """``(text, chapter)`` of the ``classes`` HS chapters with the most six-digit codes."""
    data = sources.hscodes("chapter")["train"]
    labels = list(data["label"])  # the chapter strings (the split, not the source, makes class ids)
    keep = {label for label, _ in Counter(labels).most_common(classes)}
    return [(text, label) for text, label in zip(data["text"], labels) if label in keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the CSV file to write")
    parser.add_argument("--classes", type=int, default=5)
    args = parser.parse_args()
    rows = small_rows(args.classes)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"{args.out}: {len(rows)} rows, {args.classes} classes {sorted(Counter(r[1] for r in rows).items())}")


if __name__ == "__main__":
    main()
