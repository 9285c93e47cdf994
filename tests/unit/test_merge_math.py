"""Merge math against direct computation."""

from __future__ import annotations

import pytest
import torch

from ckptmerge.config import ConfigError
from ckptmerge.merge import get_method, linear_merge, linear_merge_into


def test_linear_merge_matches_fp64_reference():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(64, 32, generator=g) for _ in range(3))
    w = [0.2, 0.3, 0.5]
    ref = (a.double() * 0.2 + b.double() * 0.3 + c.double() * 0.5).float()
    out = linear_merge([a, b, c], w)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


def test_half_inputs_accumulate_in_fp32_and_cast_back():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=g).half(), torch.randn(1000, generator=g).half()
    out = linear_merge([a, b], [0.3, 0.7])
    ref = (a.double() * 0.3 + b.double() * 0.7).half()
    assert out.dtype == torch.float16
    # within one unit in the last place of fp16 of the fp64 reference (fp32 accumulation, one rounding)
    ulp = (torch.nextafter(ref.abs(), torch.tensor(float("inf"), dtype=torch.float16)) - ref.abs()).float()
    assert bool(((out.float() - ref.float()).abs() <= ulp).all())
    assert not torch.equal(out, (a * 0.3 + b * 0.7))  # pure fp16 arithmetic would round more often


def test_one_hot_is_an_exact_copy():
    a, b = torch.randn(10, 10), torch.randn(10, 10)
    assert torch.equal(linear_merge([a, b], [0.0, 1.0]), b)
    dest = torch.empty_like(a)
    linear_merge_into(dest, [a, b], [0.0, 1.0])
    assert torch.equal(dest, b)


def test_in_place_equals_out_of_place_bitwise():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(256, generator=g), torch.randn(256, generator=g)
    for lam in (0.0, 0.137, 0.5, 0.9, 1.0):
        dest = torch.zeros(256)
        ptr = dest.data_ptr()
        linear_merge_into(dest, [a, b], [1 - lam, lam])
        assert dest.data_ptr() == ptr  # no new storage
        assert torch.equal(dest, linear_merge([a, b], [1 - lam, lam]))


def test_non_floating_tensors_come_from_the_newest():
    a, b = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    assert torch.equal(linear_merge([a, b], [0.5, 0.5]), b)
    mask_a, mask_b = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    dest = torch.zeros(3, dtype=torch.bool)
    linear_merge_into(dest, [mask_a, mask_b], [0.9, 0.1])
    assert dest.all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        linear_merge([torch.zeros(2), torch.zeros(3)], [0.5, 0.5])


def test_registry_by_name():
    assert get_method("linear") is linear_merge
    with pytest.raises(ConfigError, match="did you mean 'linear'"):
        get_method("lienar")
