"""The teacher's outputs for the training texts, computed once and cached, so a training step runs only the student.

What is cached: the logits (N, C) and, for intermediate distillation between different tokenizers, the masked
mean over tokens of the hidden states of the requested teacher layers (N, L, H) — per text, so independent of
how the student tokenizes. The cache key covers the teacher folder's weights, config and tokenizer files, the
texts in order, the input length and the layers: other data or another teacher is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from speedtrain import stopping
from speedtrain.models.digest import weights_digest

log = logging.getLogger(__name__)


SHARD_TEXTS = 1024  # texts per shard of an unfinished labelling: what a stop signal may cost, a few seconds on a CPU


@torch.no_grad()
def teacher_outputs(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
    batch_size: int = 128, layers: tuple[int, ...] = (), shard_dir: str | Path | None = None,
    shard_size: int = SHARD_TEXTS, make_trainer=None,
) -> dict[str, np.ndarray]:
    """The teacher's ``logits`` (N, C) for ``texts`` in eval mode, batched (sorted by length for speed), and with
    ``layers`` the masked token mean of those ``hidden_states`` (0: embeddings) as ``hidden`` (N, len(layers), H).

    With ``shard_dir`` every ``shard_size`` texts (in that sorted order) are written there as one file as soon as
    they are done, and shards found there are reused: a labelling stopped by a signal (it finishes its shard, then
    raises :class:`~speedtrain.stopping.Stopped`) or killed continues where it was. Under ``torch.distributed``
    (DDP ranks, several nodes with a shared cache folder) rank ``r`` of ``w`` labels the shards ``r, r + w, ...``
    that no earlier run left, then, after a barrier, every rank reads all of them: each text is labelled once.

    With ``make_trainer`` (``callbacks -> Trainer``: the run's strategy, devices and precision) and ``shard_dir``,
    Lightning's predict loop labels the shards instead (:mod:`speedtrain.distill.labelling`): a run of several
    processes that were not started yet (a cached teacher, nothing fitted before) starts them, and each labels
    its share.
    """
    teacher.eval()
    order = np.array(sorted(range(len(texts)), key=lambda i: len(texts[i])), dtype=np.int64)
    out = {"logits": np.zeros((len(texts), teacher.config.num_labels), dtype=np.float32)}
    if layers:
        out["hidden"] = np.zeros((len(texts), len(layers), teacher.config.hidden_size), dtype=np.float32)
    shards = [order[start : start + shard_size] for start in range(0, len(texts), shard_size)]
    if make_trainer is not None and shard_dir is not None:
        from speedtrain.distill.labelling import predict_outputs

        return predict_outputs(make_trainer, teacher, tokenizer, texts, shards, out, max_length, layers, batch_size,
                               Path(shard_dir))
    rank, world = _rank_and_world() if shard_dir is not None else (0, 1)
    done = reused = 0
    have: set[int] = set()  # the shards whose rows are filled
    with stopping.deferred():
        for number, idx in enumerate(track(shards, description="teacher outputs", transient=True,
                                           disable=len(shards) < 2 or rank > 0)):
            part = shard_path(shard_dir, number) if shard_dir is not None else None
            found = _read_shard(part, out, len(idx))
            if found is not None:
                for k, v in found.items():
                    out[k][idx] = v
                done, reused = done + len(idx), reused + len(idx)
                have.add(number)
                continue
            if number % world != rank:  # another rank's share: read after the barrier
                continue
            shard = {k: np.zeros((len(idx), *v.shape[1:]), v.dtype) for k, v in out.items()}
            for start in range(0, len(idx), batch_size):
                rows = idx[start : start + batch_size]
                for k, v in _batch_outputs(teacher, tokenizer, [texts[i] for i in rows], max_length, layers).items():
                    shard[k][start : start + len(rows)] = v
            for k, v in shard.items():
                out[k][idx] = v
            if part is not None:
                _save_npz(part, shard)
            done += len(idx)
            have.add(number)
            if stopping.requested() is not None:
                raise stopping.Stopped(stopping.requested(), (
                    f"stopped by {stopping.signal_name(stopping.requested())} while the teacher labelled "
                    f"{len(texts):,} texts: the outputs of {done:,} are kept in {shard_dir} for the next start"))
    if world > 1:
        labelled = done - reused
        torch.distributed.barrier()  # every rank's share is on disk
        for number, idx in enumerate(shards):
            if number not in have:
                found = _read_shard(shard_path(shard_dir, number), out, len(idx))
                if found is None:
                    raise RuntimeError(f"shard {number} of the teacher outputs is missing from {shard_dir}: the rank "
                                       f"{number % world} that labels it did not write it")
                for k, v in found.items():
                    out[k][idx] = v
        log.info("Teacher outputs: rank %d of %d labelled %s of %s texts", rank, world, f"{labelled:,}",
                 f"{len(texts):,}")
    if reused:
        log.info("Teacher outputs: reused %s of %s texts (%d shards) that an interrupted run left in %s", f"{reused:,}",
                 f"{len(texts):,}", -(-reused // shard_size), shard_dir)
    return out


def shard_path(shard_dir: str | Path, number: int) -> Path:
    """The file of shard ``number`` in ``shard_dir``."""
    return Path(shard_dir) / f"{number:06d}.npz"


def _claim_shard_folder(folder: Path, labelling: dict) -> None:
    """Write ``labelling`` (the teacher's weights digest, the texts, the shard size) as the shard folder's
    ``labelling.json``, or check that the folder's is this one: shards of another teacher (a copied or renamed
    folder) or another shard size are never mixed in. A folder without one (an older run's) is taken as it is."""
    from speedtrain.errors import UserError

    manifest = folder / "labelling.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except ValueError:
            found = None
        if found != labelling:
            other = found.get("teacher") if isinstance(found, dict) else "unreadable"
            raise UserError(f"{folder} holds teacher outputs of another labelling (teacher {other}, not "
                            f"{labelling['teacher']}; {manifest.name}: {found}); remove that folder "
                            f"(rm -r {folder}) or use another paths.cache_dir")
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".json", delete=False) as f:
        json.dump(labelling, f)
    Path(f.name).replace(manifest)  # ranks that race write the same bytes


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _batch_outputs(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
                   layers: tuple[int, ...]) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                    return_token_type_ids=False)
    enc = {k: v.to(teacher.device) for k, v in enc.items()}
    result = teacher(**enc, output_hidden_states=bool(layers))
    out = {"logits": result.logits.float().cpu().numpy()}
    if layers:
        mask = enc["attention_mask"][..., None].float()  # (B, T, 1)
        pooled = [(result.hidden_states[layer].float() * mask).sum(1) / mask.sum(1) for layer in layers]
        out["hidden"] = torch.stack(pooled, 1).cpu().numpy()
    return out


def _read_shard(path: Path | None, like: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray] | None:
    """A finished shard's arrays, or None (no file, or one that does not fit: recomputed)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as f:
            found = {k: f[k] for k in f.files}
    except (OSError, ValueError):
        return None
    if set(found) != set(like) or any(v.shape != (rows, *like[k].shape[1:]) for k, v in found.items()):
        return None
    return found


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` into ``path`` atomically: concurrent DDP ranks and a later start never read a half-written file."""
    for attempt in range(2):  # a rank that finished first removes the shard folder: make it again, once
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
                np.savez(f, **arrays)
            Path(f.name).replace(path)
            return
        except FileNotFoundError:
            if attempt:
                raise


def cached_teacher_outputs(
    teacher_dir: str | Path, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
    max_length: int, cache_dir: str | Path, layers: tuple[int, ...] = (), make_trainer=None, device: str = "cpu",
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`teacher_outputs`, cached under ``cache_dir/logits`` (``make_trainer``: label with Lightning's predict
    loop, see there; else on ``device``, the teacher moved there for the labelling and back to where it was).

    Returns:
        The outputs (``logits``, and ``hidden`` with ``layers``) and whether they came from the cache.
    """
    layers = tuple(int(layer) for layer in layers)
    digest = weights_digest(teacher_dir)
    h = hashlib.sha256(f"{digest}/{max_length}/{len(texts)}/{layers}".encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    path = Path(cache_dir) / "logits" / f"{h.hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return {k: cached[k] for k in cached.files}, True
    shards = path.with_suffix(".parts")  # the finished shards of this labelling until it is whole
    _claim_shard_folder(shards, {"teacher": digest, "texts": len(texts), "max_length": max_length,
                                 "layers": list(layers), "shard_texts": SHARD_TEXTS})
    home = teacher.device
    if make_trainer is None:
        teacher.to(device)
    try:
        outputs = teacher_outputs(teacher, tokenizer, texts, max_length, layers=layers, shard_dir=shards,
                                  shard_size=SHARD_TEXTS, make_trainer=make_trainer)
    finally:
        teacher.to(home)
    rank, world = _rank_and_world()
    if world > 1:
        torch.distributed.barrier()  # every rank has read every shard: the folder may go
    if rank == 0:
        _save_npz(path, outputs)
        shutil.rmtree(shards, ignore_errors=True)
    return outputs, False
