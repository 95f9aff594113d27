"""Where a student and its teacher disagree: accuracy and agreement on a run's test split, by text length, by
negation and contrast words, and by the teacher's confidence, with a sample of the texts the teacher gets right and
the student wrong.

    python scripts/agreement.py --run outputs/<date>/<time> [--teacher <fine-tuned teacher folder>] [--show 12]

The run's own config (``<run>/.hydra/config.yaml``) rebuilds its data split; the student is ``<run>/model``. The
teacher defaults to the run's (``teacher/key`` in its metrics.json, found in the teacher cache, or its
``teacher.path``). An ensemble teacher's n-gram half is not rebuilt: the transformer alone is compared. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

NEGATION = re.compile(r"\b(not|no|never|nothing|hardly|cannot)\b|n't", re.IGNORECASE)
CONTRAST = re.compile(r"\b(but|though|although|yet|however|despite|while)\b", re.IGNORECASE)


def probabilities(model, tokenizer, texts: list[str], max_length: int, batch: int = 128) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out.append(model(**inputs).logits.float().softmax(-1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a distillation run's output folder")
    parser.add_argument("--teacher", type=Path, help="a fine-tuned teacher's folder (default: the run's, cached)")
    parser.add_argument("--show", type=int, default=12, help="texts the teacher gets right and the student wrong")
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import speedtrain.models.static  # noqa: F401  (registers the static families with the Auto classes)
    from speedtrain.builders import build_datamodule
    from speedtrain.distill.teacher import cached_teacher
    from speedtrain.models.teacher import load_classifier, load_tokenizer

    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    data = build_datamodule(cfg)
    data.prepare()
    test = data.splits["test"]
    texts, labels = list(test["text"]), np.asarray(test["label"])
    key = json.loads((args.run / "metrics.json").read_text()).get("teacher/key")  # absent with teacher.path
    teacher_dir = args.teacher or (cached_teacher(cfg.paths.cache_dir, key) if key else cfg.teacher.get("path"))
    if teacher_dir is None:
        raise SystemExit("the run's teacher is neither in the cache nor a teacher.path: pass --teacher <folder>")
    student = AutoModelForSequenceClassification.from_pretrained(args.run / "model").eval()
    s = probabilities(student, AutoTokenizer.from_pretrained(args.run / "model"), texts, cfg.model.max_length)
    num_labels = s.shape[1]
    t = probabilities(load_classifier(str(teacher_dir), num_labels, fine_tuned=True).eval(),
                      load_tokenizer(str(teacher_dir)), texts, cfg.teacher.max_length)
    s_ok, t_ok, agree = s.argmax(1) == labels, t.argmax(1) == labels, s.argmax(1) == t.argmax(1)
    words = np.array([len(x.split()) for x in texts])
    negation = np.array([bool(NEGATION.search(x)) for x in texts])
    contrast = np.array([bool(CONTRAST.search(x)) for x in texts])
    sure = t.max(1)
    groups = [("all", words > 0), ("<= 10 words", words <= 10), ("11-20 words", (words > 10) & (words <= 20)),
              ("> 20 words", words > 20), ("a negation", negation), ("a contrast word", contrast),
              ("neither", ~negation & ~contrast), ("teacher's top p < 0.75", sure < 0.75),
              ("teacher's top p 0.75-0.95", (sure >= 0.75) & (sure < 0.95)), ("teacher's top p >= 0.95", sure >= 0.95)]
    print(f"Run {args.run}, teacher {teacher_dir}: test split of {len(texts)} texts\n")
    print("| texts | n | student % | teacher % | gap | agree % |\n|---|---:|---:|---:|---:|---:|")
    for name, mask in groups:
        if mask.any():
            print(f"| {name} | {mask.sum()} | {100 * s_ok[mask].mean():.1f} | {100 * t_ok[mask].mean():.1f} | "
                  f"{100 * (t_ok[mask].mean() - s_ok[mask].mean()):+.1f} | {100 * agree[mask].mean():.1f} |")
    print(f"\nTeacher right, student wrong: {(t_ok & ~s_ok).sum()}; "
          f"student right, teacher wrong: {(s_ok & ~t_ok).sum()}")
    for i in np.flatnonzero(t_ok & ~s_ok)[: args.show]:
        print(f"- label {labels[i]}, teacher {t[i].max():.2f}, student {s[i, labels[i]]:.2f}: {texts[i]}")


if __name__ == "__main__":
    main()
