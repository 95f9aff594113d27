"""The ``static`` student: a fastText-style bag of word-piece and hashed n-gram embeddings with a small head.

No attention and no per-token layers: a text costs one embedding lookup per token and n-gram, a mean, and a
head. The n-grams are hashed from the token ids *inside* the model, so it takes the same
``(input_ids, attention_mask)`` as the BERT students and every export, bundle and server path works unchanged.
Word pieces stand in for fastText's character n-grams (an unseen word still splits into known pieces); hashed
piece bigrams (and trigrams) carry word order, within and across words. ``conv_channels > 0`` (the
``static_conv`` family) adds one convolution over the pieces' vectors, max-pooled over the text (Kim, 2014), beside
the bag: a window of ``conv_kernel`` pieces reads the order that negation and contrast live in.

    model = build_static_student(vocab_size=5000, num_labels=96, hidden_size=128, ngram=2, buckets=2**17)
    model(input_ids=ids, attention_mask=mask).logits  # (B, C)

It is a ``transformers`` ``PreTrainedModel`` registered as ``speedtrain_static``: ``save_pretrained`` writes
``config.json`` + ``model.safetensors`` and ``AutoModelForSequenceClassification`` loads it once
``speedtrain.models`` is imported.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from speedtrain.errors import UserError

HASH_PRIME = 1_000_003  # n-gram hash: ((a * P + b) * P + c) mod buckets; < 2^63 for trigrams of a 1M vocabulary


class StaticConfig(PretrainedConfig):
    """Sizes of :class:`StaticForSequenceClassification`.

    Args:
        vocab_size: word pieces (rows ``0 .. vocab_size - 1`` of the table).
        hidden_size: embedding width D.
        ngram: longest n-gram of word pieces (1: unigrams only; 2: + bigrams; 3: + trigrams).
        buckets: hashed n-gram rows (after the vocabulary rows).
        head_hidden: width of a GELU layer before the classifier (0: a linear classifier on the mean).
        dropout: dropout on the pooled vector while training.
        pooling: ``mean`` (every piece and n-gram counts the same) or ``weighted`` (each row also learns a scalar
            importance ``w``; the text is ``sum(exp(w_i) e_i) / sum(exp(w_i))``: IDF-like, learned). The default
            here stays ``mean`` so a ``config.json`` saved before the option loads as it was trained;
            ``conf/model/static.yaml`` asks for ``weighted``.
        max_position_embeddings: longest input in tokens (``max_length`` is a generation setting in ``transformers``).
        conv_channels: 0 (no convolution) or the filters of a ``Conv1d(hidden_size, conv_channels, conv_kernel)`` over
            the pieces' vectors; ReLU, max over the text, joined to the bag's vector before the head.
        conv_kernel: the convolution's window in pieces (odd: the output keeps the input's length).
        sparse_grad: the tables (embeddings, importance) get sparse gradients while training: an optimizer that
            takes them (:class:`speedtrain.lit.optim.SparseAdamW`) updates only the rows a batch touches.
    """

    model_type = "speedtrain_static"

    def __init__(self, vocab_size: int = 5000, hidden_size: int = 128, ngram: int = 2, buckets: int = 2**17,
                 head_hidden: int = 0, dropout: float = 0.1, max_position_embeddings: int = 64, pad_token_id: int = 0,
                 pooling: str = "mean", conv_channels: int = 0, conv_kernel: int = 3,
                 sparse_grad: bool = False, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size, self.hidden_size, self.ngram, self.buckets = vocab_size, hidden_size, ngram, buckets
        self.head_hidden, self.dropout, self.pooling = head_hidden, dropout, pooling
        self.conv_channels, self.conv_kernel = conv_channels, conv_kernel
        self.sparse_grad = sparse_grad
        self.max_position_embeddings = max_position_embeddings


class StaticForSequenceClassification(PreTrainedModel):
    """``forward(input_ids (B, T), attention_mask (B, T)).logits`` is (B, C)."""

    config_class = StaticConfig
    base_model_prefix = "static"
    main_input_name = "input_ids"
    _supports_sdpa = True  # no attention at all: trainer.speed.attention=sdpa|eager leave the model as it is
    # trainer.speed.compile leaves the training forward eager: its distinct rows (torch.unique) give every batch
    # another shape, a recompile each
    compile_training = False

    def __init__(self, config: StaticConfig):
        super().__init__(config)
        sparse = bool(getattr(config, "sparse_grad", False))
        self.embeddings = nn.Embedding(config.vocab_size + config.buckets, config.hidden_size,
                                       padding_idx=config.pad_token_id, sparse=sparse)
        # pooling=weighted: a learned log-importance per row (starts at 0: the plain mean)
        self.importance = (nn.Embedding(config.vocab_size + config.buckets, 1, sparse=sparse)
                           if config.pooling == "weighted" else None)
        self.dropout = nn.Dropout(config.dropout)
        k = config.conv_kernel
        self.conv = (nn.Conv1d(config.hidden_size, config.conv_channels, k, padding=k // 2)
                     if config.conv_channels else None)
        # (k, vocab_size, K): each window slot's filters applied to every piece's row, set by for_export() only
        self.register_buffer("conv_tables", None, persistent=False)
        d, c = config.hidden_size + config.conv_channels, config.num_labels
        self.classifier = (nn.Sequential(nn.Linear(d, config.head_hidden), nn.GELU(), nn.Linear(config.head_hidden, c))
                           if config.head_hidden else nn.Linear(d, c))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.importance:
            nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):  # ReLU follows: He initialisation
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def load_teacher_table(self, table: torch.Tensor, log_weights: torch.Tensor | None = None,
                           ngram_log_weight: float = 0.0) -> None:
        """Start from a teacher's piece vectors (:mod:`speedtrain.models.static_init`) instead of noise.

        Args:
            table: (vocab_size, hidden_size) piece vectors; the hashed n-gram rows become 0 (they add nothing
                until trained).
            log_weights: (vocab_size,) initial log-importance of each piece (``pooling=weighted``), e.g. SIF
                weights; the n-gram rows get ``ngram_log_weight``.
        """
        cfg = self.config
        if tuple(table.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(f"table of shape {tuple(table.shape)} for a {cfg.vocab_size} x {cfg.hidden_size} vocabulary")
        weight = self.embeddings.weight
        weight[: cfg.vocab_size] = table.to(weight)
        weight[cfg.vocab_size :] = 0.0
        weight[cfg.pad_token_id] = 0.0
        if self.importance is not None and log_weights is not None:
            self.importance.weight[: cfg.vocab_size, 0] = log_weights.to(weight).clamp(-4.0, 4.0)
            self.importance.weight[cfg.vocab_size :, 0] = ngram_log_weight

    def for_export(self) -> StaticForSequenceClassification:
        """The model an export traces: itself, or with a convolution a copy whose filters are folded into the table.

        A window's filter response is the sum over its ``conv_kernel`` slots of (the slot's filters) x (the piece's
        row): computed once for every piece of the vocabulary, it makes the convolution ``conv_kernel`` row
        lookups and adds per position instead of a matrix product (the same numbers up to float rounding). In
        ONNX Runtime on the 2-core CPU, model time: 1.4x at 28 pieces, 1.6x at 64 (``scripts/bench_conv.py``), for
        ``conv_kernel * vocab_size * K`` more floats in the file (47 MB for 3 x 30,522 x 128). The trained
        model, its checkpoint and ``model.safetensors`` keep the filters only."""
        if self.conv is None:
            return self
        folded = copy.deepcopy(self)
        with torch.no_grad():
            rows = folded.embeddings.weight[: folded.config.vocab_size]  # (V, D); the conv reads piece rows only
            tables = torch.einsum("vd,kdj->jvk", rows, folded.conv.weight)  # (k, V, K), the weight is (K, D, k)
            # row V: what a padding position's own slot reads, far below any piece (its neighbours' slots: 0)
            extra = tables.new_zeros(tables.shape[0], 1, tables.shape[2])
            extra[tables.shape[0] // 2] = -1e4
        folded.conv_tables = torch.cat([tables, extra], dim=1).contiguous()  # (k, V + 1, K)
        return folded

    def conv_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      table: torch.Tensor | None = None) -> torch.Tensor:
        """ReLU(conv) over the pieces, max over the text: (B, T), (B, T) -> (B, K).

        The convolution (the ``nn.Conv1d``'s weights, its zero padding) runs as one matrix product of each
        position's window of ``conv_kernel`` pieces, their rows gathered straight from the table (the padding id's
        row is zero: the zero padding). The bias and the ReLU come after the max (both are monotone: the same
        numbers), padding positions held off the max by -1e4. In ONNX Runtime on a CPU this is 1.2-1.4x the
        windows built by slicing the vectors, which was 1.5-2x the Conv op (``scripts/bench_conv.py``).

        ``table``: the training forward's (U, D) distinct rows, ``input_ids`` then index them (its sparse gradient
        keeps one entry per row); a zero row is appended for the padding. An export's copy (:meth:`for_export`)
        sums its folded tables' rows instead."""
        (batch, length), k = input_ids.shape, self.config.conv_kernel
        pad = self.config.pad_token_id
        if table is None and self.conv_tables is not None:  # padding held off the max by its own row (not a mask)
            ids = nn.functional.pad(input_ids, (k // 2, k // 2), value=pad)  # (B, T + k - 1)
            slots = [ids[:, j:j + length] for j in range(k)]
            slots[k // 2] = torch.where(attention_mask > 0, input_ids, self.config.vocab_size)
            maps = sum(nn.functional.embedding(slot, self.conv_tables[j]) for j, slot in enumerate(slots))
            return torch.relu(maps.amax(dim=1) + self.conv.bias)
        if table is None:
            table = self.embeddings.weight
        else:
            table, pad = torch.cat([table, table.new_zeros(1, table.shape[1])]), table.shape[0]
        ids = nn.functional.pad(input_ids, (k // 2, k // 2), value=pad)  # (B, T + k - 1)
        windows = torch.stack([ids[:, j:j + length] for j in range(k)], dim=2)  # (B, T, k): ids, window order
        x = nn.functional.embedding(windows, table).reshape(batch * length, -1)  # (B * T, k * D)
        weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, -1)  # (K, k * D), the same order
        maps = torch.mm(x, weight.t()).reshape(batch, length, -1)  # (B, T, K), before bias and ReLU
        return self._max_over_text(maps, attention_mask)

    def _max_over_text(self, maps: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, K) filter responses before bias and ReLU -> (B, K): the max over the text's pieces."""
        maps = maps + (attention_mask.unsqueeze(2).to(maps.dtype) - 1.0) * 1e4  # padding: far below any piece
        return torch.relu(maps.amax(dim=1) + self.conv.bias)

    def grams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the table to average and their weights: the pieces, then each n-gram hashed into the buckets.

        (B, T), (B, T) -> rows (B, ngram * T), weights (B, ngram * T): every order has T columns, the n-gram
        starting at each position; one that runs into padding or past the end weighs 0. The inputs are right-padded
        by ``ngram - 1`` columns first, so no shape-dependent branch: exports have a free length.
        """
        cfg, length, extra = self.config, input_ids.shape[1], self.config.ngram - 1
        rows, weights = [input_ids], [attention_mask]
        ids = nn.functional.pad(input_ids, (0, extra), value=cfg.pad_token_id)  # (B, T + ngram - 1)
        mask = nn.functional.pad(attention_mask, (0, extra), value=0)
        for n in range(2, cfg.ngram + 1):
            code, ok = input_ids, attention_mask
            for j in range(1, n):
                code = code * HASH_PRIME + ids[:, j:j + length]
                ok = ok * mask[:, j:j + length]
            rows.append(code % cfg.buckets + cfg.vocab_size)
            weights.append(ok)
        return torch.cat(rows, dim=1), torch.cat(weights, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        rows, weights = self.grams(input_ids, attention_mask)  # (B, G), (B, G)
        weights = weights.to(self.embeddings.weight.dtype)
        if self.training:
            return self._train_forward(input_ids, attention_mask, rows, weights, labels, output_hidden_states)
        if self.importance is not None:  # e^+-4 at most: 192 rows sum to < 11K, finite in an fp16 export
            weights = weights * self.importance(rows).squeeze(-1).clamp(-4.0, 4.0).exp()
        vectors = self.embeddings(rows)  # (B, G, D): the pieces' T rows first, then the n-grams'
        total = torch.bmm(weights.unsqueeze(1), vectors).squeeze(1)  # (B, D): masked sum, one op
        conv = self.conv_features(input_ids, attention_mask) if self.conv is not None else None
        return self._head(total, weights, conv, labels, output_hidden_states)

    def _train_forward(self, input_ids, attention_mask, rows, weights, labels, output_hidden_states):
        """The training forward: the batch's distinct rows are looked up once (U of them; with ``sparse_grad`` the
        tables' gradients are (U, D), one entry per row) and the bag is one ``embedding_bag`` over them. The same
        numbers as the evaluation forward (tested). Its backward builds no (B, G, D) gradient: about half the step
        time at batch 1024 in an exploratory loop; the whole path is measured by ``scripts/bench_static_train.py``."""
        uniq, inverse = torch.unique(rows, return_inverse=True)  # (U,), (B, G)
        table = self.embeddings(uniq)  # (U, D)
        if self.importance is not None:
            weights = weights * self.importance(uniq).squeeze(-1).clamp(-4.0, 4.0).exp()[inverse]
        total = nn.functional.embedding_bag(inverse, table, per_sample_weights=weights, mode="sum")  # (B, D)
        conv = None
        if self.conv is not None:
            conv = self.conv_features(inverse[:, : input_ids.shape[1]], attention_mask, table)
        return self._head(total, weights, conv, labels, output_hidden_states)

    def _head(self, total, weights, conv, labels, output_hidden_states):
        pooled = total / weights.sum(1, keepdim=True).clamp(min=1e-4)  # the (weighted) mean of its pieces and n-grams
        features = pooled if conv is None else torch.cat([pooled, conv], dim=1)  # (B, D [+ K])
        logits = self.classifier(self.dropout(features))  # (B, C)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        hidden = (pooled,) if output_hidden_states else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


AutoConfig.register(StaticConfig.model_type, StaticConfig, exist_ok=True)
AutoModelForSequenceClassification.register(StaticConfig, StaticForSequenceClassification, exist_ok=True)


def build_static_student(
    vocab_size: int,
    num_labels: int,
    max_length: int = 64,
    hidden_size: int = 128,
    ngram: int = 2,
    buckets: int = 2**17,
    head_hidden: int = 0,
    dropout: float = 0.1,
    pooling: str = "mean",
    conv_channels: int = 0,
    conv_kernel: int = 3,
    sparse_grad: bool = False,
    pad_token_id: int = 0,
    id2label: dict[int, str] | None = None,
) -> StaticForSequenceClassification:
    """A randomly initialised :class:`StaticForSequenceClassification` (see :class:`StaticConfig` for the sizes).

    Returns:
        The model; ``forward(input_ids (B, T), attention_mask (B, T)).logits`` is (B, C).
    """
    for key, value in (("model.hidden_size", hidden_size), ("model.max_length", max_length)):
        if value <= 0:
            raise UserError(f"{key}={value} must be positive")
    if ngram not in (1, 2, 3):
        raise UserError(f"model.ngram={ngram} must be 1, 2 or 3 (longest n-gram of word pieces), e.g. model.ngram=2")
    if ngram > 1 and buckets <= 0:
        raise UserError(f"model.buckets={buckets} must be positive with model.ngram={ngram}, e.g. 131072")
    if pooling not in ("mean", "weighted"):
        raise UserError(f"model.pooling={pooling!r} must be 'mean' or 'weighted' (a learned importance per row)")
    if head_hidden < 0:
        raise UserError(f"model.head_hidden={head_hidden} must be >= 0 (0: a linear classifier)")
    if conv_channels < 0 or (conv_channels and (conv_kernel < 1 or conv_kernel % 2 == 0)):
        raise UserError(f"model.conv_channels={conv_channels}, model.conv_kernel={conv_kernel}: the filters must be "
                        ">= 0 (0: no convolution) and the window an odd number of pieces, e.g. conv_kernel=3")
    id2label = id2label or {i: str(i) for i in range(num_labels)}
    config = StaticConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, ngram=ngram, buckets=buckets if ngram > 1 else 0,
        head_hidden=head_hidden, dropout=dropout, pooling=pooling, max_position_embeddings=max_length, pad_token_id=pad_token_id,
        conv_channels=conv_channels, conv_kernel=conv_kernel, sparse_grad=sparse_grad,
        num_labels=num_labels, id2label=dict(id2label), label2id={v: k for k, v in id2label.items()},
    )
    return StaticForSequenceClassification(config)
