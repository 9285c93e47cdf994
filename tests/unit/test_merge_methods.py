"""Each baseline merge method against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckptmerge.merge.fisher import fisher_merge
from ckptmerge.merge.regmean import regmean_merge
from ckptmerge.merge.soups import ema_weights, lawa_weights, uniform_weights


def test_uniform_and_lawa():
    assert uniform_weights(4) == [0.25] * 4
    assert lawa_weights(5, 2) == [0, 0, 0, 0.5, 0.5]
    assert lawa_weights(2, 5) == [0.5, 0.5]


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.9])
def test_ema_weights_equal_a_running_ema(beta):
    g = torch.Generator().manual_seed(0)
    thetas = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    ema = thetas[0].clone()
    for t in thetas[1:]:
        ema = beta * ema + (1 - beta) * t
    w = ema_weights(5, beta)
    assert sum(w) == pytest.approx(1)
    assert torch.allclose(sum(wi * t for wi, t in zip(w, thetas)), ema)


def test_fisher_merge_is_the_fisher_weighted_mean():
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(5, 3, generator=g) for _ in range(3)]
    fs = [torch.rand(5, 3, generator=g) for _ in range(3)]
    floor = 1e-6
    direct = sum((f + floor) * t for f, t in zip(fs, ts)) / sum(f + floor for f in fs)
    assert torch.allclose(fisher_merge(ts, fs, floor), direct, atol=1e-6)
    # where every Fisher is zero the floor makes it the plain mean
    zeros = [torch.zeros(5, 3) for _ in range(3)]
    assert torch.allclose(fisher_merge(ts, zeros, floor), sum(ts) / 3, atol=1e-6)


def test_regmean_full_is_the_least_squares_merge():
    rng = np.random.default_rng(0)
    d_in, d_out = 6, 4
    xs = [rng.normal(size=(50, d_in)) for _ in range(2)]
    ws = [rng.normal(size=(d_out, d_in)) for _ in range(2)]
    grams = [torch.tensor(x.T @ x) for x in xs]
    merged = regmean_merge([torch.tensor(w) for w in ws], grams, alpha=1.0, out_dtype=torch.float64).numpy()
    # direct: minimise Σ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖² by least squares on the stacked inputs
    X = np.vstack(xs)
    Y = np.vstack([x @ w.T for x, w in zip(xs, ws)])
    direct = np.linalg.lstsq(X, Y, rcond=None)[0].T
    assert np.allclose(merged, direct, atol=1e-8)


def test_regmean_alpha_zero_is_a_per_input_weighted_average():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(30, 5)) * rng.uniform(0.1, 3, size=5) for _ in range(3)]
    ws = [rng.normal(size=(2, 5)) for _ in range(3)]
    grams = [torch.tensor(x.T @ x) for x in xs]
    merged = regmean_merge([torch.tensor(w) for w in ws], grams, alpha=0.0, out_dtype=torch.float64).numpy()
    d = [np.diag(g.numpy()) for g in grams]
    direct = sum(di * w for di, w in zip(d, ws)) / sum(d)
    assert np.allclose(merged, direct, atol=1e-10)


def test_regmean_dead_inputs_fall_back_to_the_mean():
    ws = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    g = torch.eye(4, dtype=torch.float64)
    g[2, 2] = 0.0  # input feature 2 never fires
    merged = regmean_merge(ws, [g, g], alpha=1.0, out_dtype=torch.float64)
    assert torch.allclose(merged[:, 2], (ws[0][:, 2] + ws[1][:, 2]) / 2)
    assert torch.isfinite(merged).all()


def test_calibration_grams_equal_the_inputs_outer_products(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from ckptmerge.calibration import diagonal_fisher, linear_input_grams
    from tests.helpers import tiny_neox

    folder = tiny_neox(tmp_path / "m", seed=0)
    model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
    vocab = {chr(ord("a") + i): i for i in range(26)}
    vocab["[UNK]"] = 26
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[UNK]")
    texts = ["abcdefghij", "klmnopqrst"]
    grams = linear_input_grams(model, tok, texts, tokens=100, max_length=32)
    name = "gpt_neox.layers.0.mlp.dense_4h_to_h"
    assert name in grams and grams[name].shape == (32, 32)
    captured = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: captured.append(a[0].reshape(-1, 32).double()))
    with torch.no_grad():
        for t in texts:
            model(input_ids=torch.tensor([[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]]))
    h.remove()
    X = torch.cat(captured)
    assert torch.allclose(grams[name], X.T @ X, atol=1e-8)
    fisher = diagonal_fisher(model, tok, texts, tokens=100, max_length=32)
    emb = fisher["gpt_neox.embed_in.weight"]
    assert (emb >= 0).all() and emb[:26].sum() > 0
    assert emb[40:].abs().sum() == 0  # token ids never seen get no gradient
