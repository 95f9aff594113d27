"""The compact student: a Hugging Face BERT of a configured size over the small vocabulary.

Being a plain ``BertForSequenceClassification``, a trained student saves with ``save_pretrained`` and loads
with ``AutoModelForSequenceClassification`` anywhere, without speedtrain.
"""

from __future__ import annotations

from transformers import BertConfig, BertForSequenceClassification

from speedtrain.errors import UserError


def build_student(
    vocab_size: int,
    num_labels: int,
    max_length: int = 32,
    num_hidden_layers: int = 2,
    hidden_size: int = 128,
    num_attention_heads: int = 2,
    intermediate_size: int = 512,
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    pad_token_id: int = 0,
    id2label: dict[int, str] | None = None,
) -> BertForSequenceClassification:
    """A randomly initialised BERT classifier with SDPA attention.

    Args:
        vocab_size: the tokenizer's vocabulary size.
        num_labels: number of classes.
        max_length: longest input in tokens (sets ``max_position_embeddings``).
        num_hidden_layers, hidden_size, num_attention_heads, intermediate_size: the encoder's shape.
        id2label: label names, stored in ``config.json`` so a saved student predicts names.

    Returns:
        ``BertForSequenceClassification``; ``forward(input_ids (B, T), attention_mask (B, T)).logits`` is (B, C).
    """
    if hidden_size % num_attention_heads:
        raise UserError(
            f"model.hidden_size={hidden_size} is not divisible by model.num_attention_heads={num_attention_heads}; "
            "pick a head count that divides the width"
        )
    for key, value in (("model.max_length", max_length), ("model.num_hidden_layers", num_hidden_layers),
                       ("model.hidden_size", hidden_size), ("model.intermediate_size", intermediate_size)):
        if value <= 0:
            raise UserError(f"{key}={value} must be positive")
    id2label = id2label or {i: str(i) for i in range(num_labels)}
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_length,
        type_vocab_size=1,
        pad_token_id=pad_token_id,
        num_labels=num_labels,
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
        attn_implementation="sdpa",
    )
    return BertForSequenceClassification(config)


def count_parameters(model) -> dict[str, int]:
    """Total parameters and those outside the embedding tables (what costs compute per token)."""
    def numel(p) -> int:  # DeepSpeed ZeRO-3 leaves an empty placeholder; the full size is ``ds_numel``
        return getattr(p, "ds_numel", p.numel())

    total = sum(numel(p) for p in model.parameters())
    embeddings = sum(numel(p) for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    return {"params_total": total, "params_non_embedding": total - embeddings}
