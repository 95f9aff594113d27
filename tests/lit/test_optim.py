"""SparseAdamW and the clipping of sparse gradients: the static tables' fast path (lit/optim.py)."""

from __future__ import annotations

import pytest
import torch

from speedtrain.lit.optim import SparseAdamW, clip_grad_norm_, clip_grad_value_, coalesced


def _pair(rows: int = 20, width: int = 4, device: str = "cpu"):
    """The same table as a sparse-gradient and a dense-gradient embedding, and a dense head beside each."""
    torch.manual_seed(0)
    sparse, dense = torch.nn.Embedding(rows, width, sparse=True), torch.nn.Embedding(rows, width)
    dense.load_state_dict(sparse.state_dict())
    heads = torch.nn.Linear(width, 2), torch.nn.Linear(width, 2)
    heads[1].load_state_dict(heads[0].state_dict())
    return (sparse.to(device), heads[0].to(device)), (dense.to(device), heads[1].to(device))


def _backward(table, head, ids):
    head(table(ids).sum(1)).pow(2).sum().backward()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_it_is_adamw_when_every_row_has_a_gradient_every_step(device):
    """Lazy updates differ from AdamW only for rows a step does not touch: touching all, 5 steps are AdamW's.
    On a GPU the fused kernel runs on CUDA tensors (``pytest -m gpu tests/lit/test_optim.py``)."""
    (s_table, s_head), (d_table, d_head) = _pair(device=device)
    settings = dict(lr=0.05, weight_decay=0.1, betas=(0.8, 0.95))
    sparse = SparseAdamW([*s_table.parameters(), *s_head.parameters()], **settings)
    dense = torch.optim.AdamW([*d_table.parameters(), *d_head.parameters()], **settings)
    for step in range(5):
        ids = torch.randperm(20, device=device).view(4, 5)  # every row, duplicates none: a new order every step
        ids = torch.cat([ids, ids[:, :2]], dim=1)  # and some rows twice in a text
        for table, head, opt in ((s_table, s_head, sparse), (d_table, d_head, dense)):
            _backward(table, head, ids)
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(s_table.weight, d_table.weight)
    torch.testing.assert_close(s_head.weight, d_head.weight)
    assert float(sparse.state[s_table.weight]["step"]) == 5.0


def test_rows_without_a_gradient_keep_their_values_and_moments():
    (table, head), _ = _pair()
    opt = SparseAdamW([*table.parameters(), *head.parameters()], lr=0.1, weight_decay=0.5)
    _backward(table, head, torch.tensor([[1, 2, 3]]))
    opt.step()
    opt.zero_grad()
    before = table.weight.detach().clone()
    moments = opt.state[table.weight]["exp_avg"].clone()
    _backward(table, head, torch.tensor([[4, 5, 5]]))
    opt.step()
    changed = (table.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [4, 5]  # no decay, no momentum for rows 1-3 (nor for any other)
    torch.testing.assert_close(opt.state[table.weight]["exp_avg"][[1, 2, 3]], moments[[1, 2, 3]])


def test_state_dict_round_trip_continues_identically():
    (table, head), _ = _pair()
    params = [*table.parameters(), *head.parameters()]
    opt = SparseAdamW(params, lr=0.1)
    _backward(table, head, torch.tensor([[1, 2, 3]]))
    opt.step()
    saved = {k: v.clone() for k, v in zip(("t", "h", "b"), params)}, opt.state_dict()
    copy = SparseAdamW(params, lr=0.1)
    copy.load_state_dict(saved[1])
    for o in (opt, copy):
        with torch.no_grad():
            for p, v in zip(params, saved[0].values()):
                p.copy_(v)
        o.zero_grad()
        _backward(table, head, torch.tensor([[3, 4, 4]]))
        o.step()
    # the same state after the same step: the loaded optimizer continued where the first one was
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(copy.state[table.weight][key], opt.state[table.weight][key])


@pytest.mark.parametrize("max_norm", [0.01, 1e6])
def test_clipping_counts_the_touched_rows_as_the_dense_gradient_would(max_norm):
    (s_table, s_head), (d_table, d_head) = _pair()
    ids = torch.tensor([[1, 2, 2, 7], [7, 7, 3, 0]])
    _backward(s_table, s_head, ids)
    _backward(d_table, d_head, ids)
    total = clip_grad_norm_([*s_table.parameters(), *s_head.parameters()], max_norm)
    expected = torch.nn.utils.clip_grad_norm_([*d_table.parameters(), *d_head.parameters()], max_norm)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(s_table.weight.grad.to_dense(), d_table.weight.grad)
    torch.testing.assert_close(s_head.weight.grad, d_head.weight.grad)
    clip_grad_value_([s_table.weight], 1e-4)
    assert s_table.weight.grad._values().abs().max() <= 1e-4


def test_coalesced_sums_duplicate_rows():
    grad = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3]]), torch.tensor([[1.0], [2.0], [4.0]]), (5, 1),
                                   check_invariants=True)
    rows, values = coalesced(grad)
    assert rows.tolist() == [1, 3] and values.flatten().tolist() == [2.0, 5.0]
    unsorted = torch.sparse_coo_tensor(torch.tensor([[3, 1]]), torch.tensor([[1.0], [2.0]]), (5, 1),
                                       check_invariants=True)
    assert coalesced(unsorted)[0].tolist() == [1, 3] and coalesced(unsorted)[1].flatten().tolist() == [2.0, 1.0]
    once = torch.sparse_coo_tensor(torch.tensor([[0, 2, 4]]), torch.tensor([[1.0], [2.0], [3.0]]), (5, 1),
                                   check_invariants=True)
    rows, values = coalesced(once)  # each row once, in order: taken as it is (no sort, no sum)
    assert rows.tolist() == [0, 2, 4] and values.data_ptr() == once._values().data_ptr()


def test_the_tables_train_dense_where_sparse_gradients_cannot_go(caplog):
    """An optimizer without sparse support, DDP over NCCL or DeepSpeed: the tables turn dense, with a line saying
    why; one process or DDP over gloo keeps them sparse."""
    import functools
    import logging

    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    from speedtrain.lit.classifier import keep_sparse_tables
    from speedtrain.models.static import build_static_student

    def model():
        return build_static_student(vocab_size=50, num_labels=2, hidden_size=4, buckets=64, pooling="weighted",
                                    sparse_grad=True)

    sparse_adamw, adamw = functools.partial(SparseAdamW, lr=1e-3), functools.partial(torch.optim.AdamW, lr=1e-3)
    one = SingleDeviceStrategy(torch.device("cpu"))
    for strategy in (one, DDPStrategy(process_group_backend="gloo")):
        kept = model()
        assert keep_sparse_tables(kept, sparse_adamw, strategy) and kept.embeddings.sparse and kept.importance.sparse
    for optimizer, strategy, why in ((adamw, one, "the optimizer AdamW takes no sparse gradients"),
                                     (sparse_adamw, DDPStrategy(process_group_backend="nccl"), "NCCL")):
        dense = model()
        with caplog.at_level(logging.INFO):
            assert not keep_sparse_tables(dense, optimizer, strategy)
        assert not dense.embeddings.sparse and not dense.importance.sparse and not dense.config.sparse_grad
        assert why in caplog.text
    assert not keep_sparse_tables(torch.nn.Linear(2, 2), adamw, one)  # nothing sparse: nothing to say
