"""The number formats of llm_deeper.quantization against their references: GGUF blocks byte for
byte against the `gguf` package (random tensors and a real SmolLM2 tensor), FP8 bit for bit
against PyTorch's casts, NF4 against bitsandbytes' published table; INT8/INT4 error bounds."""

import numpy as np
import pytest
import torch

from llm_deeper.errors import UserError
from llm_deeper.quantization import (
    FORMATS,
    dequantize,
    error_report,
    fp8,
    get_format,
    gguf_blocks,
    integer,
    nf4,
    quantize,
)

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

GGML = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1}
TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def same_floats(a, b) -> bool:
    """Bit-identical float32 arrays (NaN = NaN when their bits are equal, -0.0 != 0.0)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def hard_tensor(shape, seed) -> np.ndarray:
    """Random values over many scales, with the blocks that break careless quantizers: all
    zeros, one huge value among small ones, negative-dominant, a +-tie of the extreme, halves."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-6, 3, shape[:-1] + (1,)))
    blocks = x.reshape(-1, 32)
    blocks[0] = 0.0
    if len(blocks) > 1:
        blocks[1] = rng.standard_normal(32) * 1e-3
        blocks[1, 5] = 3e4
    if len(blocks) > 2:
        blocks[2] = -np.abs(blocks[2])
        blocks[2, 0] = -40.0
    if len(blocks) > 3:
        blocks[3, :2] = [-7.0, 7.0]
    if len(blocks) > 4:
        blocks[4] = np.arange(32) / 2 - 8  # values on and between the grid points
    if len(blocks) > 5:  # scale exactly 1 in Q8_0: x * (1/d) hits halves, roundf != rint
        blocks[5] = np.resize([127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -3.5, 126.5], 32)
    return x.astype(np.float32)


# ------------------------------------------------------------------ GGUF blocks
@pytest.mark.parametrize("fmt", list(GGML))
@pytest.mark.parametrize("shape", [(32,), (6, 64), (4, 3, 96), (33, 256)])
def test_gguf_blocks_are_bit_identical_to_gguf(fmt, shape):
    x = hard_tensor(shape, seed=len(shape) * 7 + shape[-1])
    ours, ref = gguf_blocks.QUANTIZE[fmt](x), gguf_quantize(x, GGML[fmt])
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)
    assert same_floats(gguf_blocks.DEQUANTIZE[fmt](ref), gguf_dequantize(ref, GGML[fmt]))


def test_gguf_block_layout_by_hand():
    x = np.arange(32, dtype=np.float32) - 16  # extreme -16: Q4_0 d = 2, codes n = x / 2 + 8
    q8 = gguf_blocks.q8_0_quantize(x)
    assert q8.shape == (34,) and q8[:2].view(np.float16)[0] == np.float16(16 / 127)
    assert q8[2:].view(np.int8)[0] == -127 and q8[2:].view(np.int8)[16] == 0
    q4 = gguf_blocks.q4_0_quantize(x)
    assert q4.shape == (18,) and q4[:2].view(np.float16)[0] == 2.0
    # byte 2 + j: element j (x = j - 16) low, element j + 16 (x = j) high
    assert [q4[2] & 15, q4[2] >> 4] == [0, 8] and [q4[17] & 15, q4[17] >> 4] == [8, 15]
    q41 = gguf_blocks.q4_1_quantize(x)
    assert q41.shape == (20,) and q41[2:4].view(np.float16)[0] == -16.0  # m = min
    assert q41[:2].view(np.float16)[0] == np.float16(31 / 15)
    assert q41[4] & 15 == 0 and q41[4 + 15] >> 4 == 15


def test_gguf_blocks_on_a_real_smollm2_tensor():
    from llm_deeper.pretrained import models

    if not models.is_cached("smollm2-135m"):
        pytest.skip("SmolLM2 not cached: run 'llm-deeper models pull smollm2-135m'")
    reader = gguf.GGUFReader(models.gguf_file("smollm2-135m", "the test reads a real tensor"))
    tensors = {t.name: t for t in reader.tensors}
    checked = set()
    for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
        t = tensors[name]
        kind = t.tensor_type.name.lower()
        raw = np.array(t.data[:256])  # 256 rows is plenty (the embedding has 49,152)
        w = gguf_dequantize(raw, t.tensor_type)
        assert same_floats(gguf_blocks.DEQUANTIZE[kind](raw), w)
        for fmt, qtype in GGML.items():
            ours = gguf_blocks.QUANTIZE[fmt](w)
            assert np.array_equal(ours, gguf_quantize(w, qtype)), (name, fmt)
            assert same_floats(gguf_blocks.DEQUANTIZE[fmt](ours), gguf_dequantize(ours, qtype))
        checked.add(kind)
    assert checked == {"q4_1", "q8_0"}


# ------------------------------------------------------------------ FP8
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_decode_of_all_256_codes_equals_torch(fmt):
    codes = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(codes).view(TORCH_FP8[fmt]).float().numpy()
    ours = fp8.decode(codes, fmt)
    assert np.array_equal(ours, ref, equal_nan=True)
    assert np.isnan(ours).sum() == (2 if fmt == "e4m3" else 6)
    assert np.nanmax(ours[np.isfinite(ours)]) == fp8.FP8_FORMATS[fmt].max


def fp8_cases(fmt) -> np.ndarray:
    rng = np.random.default_rng(1)
    values = fp8.decode(np.arange(256, dtype=np.uint8), fmt).astype(np.float64)
    finite = np.sort(np.unique(values[np.isfinite(values)]))
    ties = (finite[:-1] + finite[1:]) / 2  # exactly halfway: round to nearest even
    near = np.concatenate([np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                           np.nextafter(ties.astype(np.float32), np.float32(-np.inf))])
    top = fp8.FP8_FORMATS[fmt].max
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, top, top * 1.03, top * 1.07,
               top * 1.2, 1e30, -1e30, 2.0 ** -9, 2.0 ** -10, 2.0 ** -16, 2.0 ** -17, 1e-45]
    magnitudes = rng.standard_normal(50_000) * np.exp2(rng.uniform(-22, 18, 50_000))
    random_bits = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32)
    exact = np.concatenate([ties, -ties, special, magnitudes, finite, -finite]).astype(np.float32)
    return np.concatenate([exact, near, random_bits.view(np.float32)])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_encode_equals_torch_cast(fmt):
    x = fp8_cases(fmt)
    ref = torch.from_numpy(x).to(TORCH_FP8[fmt]).view(torch.uint8).numpy()
    ours = fp8.encode(x, fmt)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, (x[bad[:5]], ours[bad[:5]], ref[bad[:5]])


def test_fp8_rounding_and_overflow_conventions():
    one = 0x38  # E4M3 1.0; next codes 1.125 (0x39), 1.25 (0x3A)
    assert fp8.encode([1.0625, 1.1875, -1.0625], "e4m3").tolist() == [one, 0x3A, 0x80 | one]
    assert fp8.encode([0.3], "e4m3")[0] == 0x2A and fp8.decode([0x2A])[0] == 0.3125
    # what torch does: E4M3 saturates (inf too), E5M2 overflows to inf; NaN keeps its sign
    over = torch.tensor([1e6, float("inf"), 61440.0, -float("nan")])
    assert over.to(torch.float8_e4m3fn).view(torch.uint8).tolist() == [0x7E, 0x7E, 0x7E, 0xFF]
    assert over.to(torch.float8_e5m2).view(torch.uint8).tolist() == [0x7C, 0x7C, 0x7C, 0xFF]
    x = np.array([1e6, np.inf, -500.0, 61440.0, np.nan], np.float32)
    assert fp8.encode(x, "e4m3").tolist() == [0x7E, 0x7E, 0xFE, 0x7E, 0x7F]
    assert fp8.encode(x, "e4m3", saturate=False).tolist() == [0x7F, 0x7F, 0xFF, 0x7F, 0x7F]
    assert fp8.encode(x, "e5m2").tolist() == [0x7C, 0x7C, 0xE0, 0x7C, 0x7F]
    assert fp8.encode(x, "e5m2", saturate=True).tolist() == [0x7B, 0x7B, 0xE0, 0x7B, 0x7F]
    assert fp8.encode([464.0, 470.0], "e4m3", saturate=False).tolist() == [0x7E, 0x7F]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_scaled_fp8_per_tensor_and_per_channel(fmt):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((16, 64)) * 1e-3).astype(np.float32)
    w[3] *= {"e4m3": 1e5, "e5m2": 1e9}[fmt]  # past the format's range below max: subnormals, 0
    q = fp8.fp8_quantize(w, fmt)
    top = fp8.FP8_FORMATS[fmt].max
    assert q.scales.shape == (1,) and q.scales[0] == np.float32(np.abs(w).max() / top)
    rel = 2.0 ** -(fp8.FP8_FORMATS[fmt].mbits + 1)  # half an ulp, relative, for normal values
    deq = fp8.fp8_dequantize(fp8.fp8_quantize(w[3:4], fmt))
    assert np.all(np.abs(deq - w[3:4]) <= rel * np.abs(w[3:4]) * 1.0001 + 1e-30)
    per_row = fp8.fp8_quantize(w, fmt, per_channel=True)
    assert per_row.scales.shape == (16, 1) and per_row.nbytes == w.size + 16 * 4
    others = [np.mean(np.delete(fp8.fp8_dequantize(x) - w, 3, axis=0) ** 2) for x in (q, per_row)]
    assert others[1] < others[0] / 10  # FP8 is relative precision: only a huge range hurts


# ------------------------------------------------------------------ NF4
def test_nf4_codebook_is_bitsandbytes_table():
    table = nf4.nf4_codebook()
    assert np.allclose(table, nf4.NF4_PUBLISHED, rtol=0, atol=1e-6)
    assert table[7] == 0.0 and table[0] == -1.0 and table[-1] == 1.0
    assert (table > 0).sum() == 8 and (table < 0).sum() == 7 and np.all(np.diff(table) > 0)


@pytest.mark.parametrize("shape", [(64,), (8, 96), (3, 5, 7)])
def test_nf4_round_trip_within_half_a_gap(shape):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    q = nf4.nf4_quantize(w)
    deq = nf4.nf4_dequantize(q)
    assert deq.shape == w.shape and q.codes.size == -(-w.size // 64) * 32
    flat = np.concatenate([w.reshape(-1), np.zeros(-w.size % 64, np.float32)]).reshape(-1, 64)
    absmax = np.abs(flat).max(axis=1, keepdims=True)
    y = flat / absmax
    j = np.clip(np.searchsorted(nf4.NF4, y), 1, 15)  # y lies in [NF4[j-1], NF4[j]]
    half_gap = (nf4.NF4[j] - nf4.NF4[j - 1]) / 2
    padded = np.concatenate([deq.reshape(-1), flat.reshape(-1)[w.size:]]).reshape(-1, 64)
    err = np.abs(flat - padded)
    assert np.all(err <= half_gap * absmax * (1 + 1e-5))
    brute = np.abs(y[..., None] - nf4.NF4).argmin(axis=-1)  # nearest code, by brute force
    assert np.array_equal(nf4.nf4_indices(q), brute)


def test_nf4_double_quantization_bits_and_error():
    assert nf4.nf4_bits_per_param() - 4 == 0.5
    assert round(nf4.nf4_bits_per_param(double_quant=True) - 4, 3) == 0.127  # QLoRA's figure
    n = 64 * 256 * 4
    w = (np.random.default_rng(4).standard_normal(n) * 0.02).astype(np.float32)
    plain, dq = nf4.nf4_quantize(w), nf4.nf4_quantize(w, double_quant=True)
    assert plain.nbytes == n // 2 + n // 64 * 4
    assert dq.nbytes == n // 2 + n // 64 + (n // 64 // 256) * 4 + 4  # codes, int8 c, scales, mean
    assert dq.bits_per_param == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n, abs=1e-12)
    absmax = plain.scales
    step = np.repeat(dq.extra["dq_scales"], 256)
    assert np.all(np.abs(nf4._constants(dq) - absmax) <= step * (0.5 + 1e-4))
    e_plain, e_dq = (float(np.mean((nf4.nf4_dequantize(q) - w) ** 2)) for q in (plain, dq))
    assert e_dq <= e_plain * 1.01


# ------------------------------------------------------------------ INT8 / INT4
def test_int8_error_is_at_most_half_a_step():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((32, 48)) * rng.uniform(0.01, 3, (32, 1))).astype(np.float32)
    w[0] = 0.0
    for per_channel in (False, True):
        q = integer.int8_quantize(w, per_channel=per_channel)
        assert q.codes.dtype == np.int8 and np.abs(q.codes.astype(int)).max() == 127
        err = np.abs(integer.int8_dequantize(q).astype(np.float64) - w)
        assert np.all(err <= q.scales * (0.5 + 1e-4))
        a = integer.int8_asym_quantize(w + 0.5, per_channel=per_channel)
        err = np.abs(integer.int8_asym_dequantize(a).astype(np.float64) - (w + 0.5))
        assert np.all(err <= a.scales * (0.5 + 1e-4)) and a.codes.dtype == np.uint8
    z = integer.int8_asym_quantize(np.array([[-0.1, 0.0, 2.45]], np.float32))
    assert z.zeros[0] == 10 and integer.int8_asym_dequantize(z)[0, 1] == 0.0


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_bound_and_codes(group_size):
    w = (np.random.default_rng(6).standard_normal((8, 256)) * 0.1).astype(np.float32)
    q = integer.int4_quantize(w, group_size=group_size)
    assert q.codes.size == w.size // 2 and q.scales.shape == (8, 256 // group_size)
    codes = integer.int4_codes(q)
    assert codes.min() >= -7 and codes.max() <= 7 and np.abs(codes).max() == 7
    step = np.repeat(q.scales, group_size, axis=1)
    assert np.all(np.abs(integer.int4_dequantize(q) - w) <= step * (0.5 + 1e-4))
    assert q.bits_per_param == 4 + 32 / group_size


def test_int4_packing_round_trip():
    codes = np.random.default_rng(7).integers(-8, 8, 1000).astype(np.int8)
    packed = integer.pack_int4(codes)
    assert packed.size == 500 and np.array_equal(integer.unpack_int4(packed), codes)
    assert integer.pack_int4([-7, 3, 0, 7]).tolist() == [0xB1, 0xF8]


@pytest.mark.parametrize("fmt", ["int8", "int8_asym", "fp8_e4m3"])
def test_per_channel_beats_per_tensor_with_one_large_row(fmt):
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((64, 128)) * 0.01).astype(np.float32)
    w[0] *= 1e5  # FP8 E4M3 needs a range this wide to lose the small rows to subnormals
    tensor, channel = quantize(w, fmt), quantize(w, fmt, per_channel=True)
    small_rows = [float(np.mean((dequantize(q)[1:] - w[1:]) ** 2)) for q in (tensor, channel)]
    assert small_rows[1] < small_rows[0] / 100  # the large row no longer sets their step
    per_row = 5 if fmt == "int8_asym" else 4  # a float32 scale (+ a uint8 zero point) per row
    assert channel.nbytes == tensor.nbytes + 63 * per_row


# ------------------------------------------------------------------ registry and errors
def test_every_format_reports_error_and_bytes():
    w = (np.random.default_rng(9).standard_normal((64, 256)) * 0.02).astype(np.float32)
    reports = {name: error_report(w, name) for name in FORMATS}
    bits = {k: r["bits_per_param"] for k, r in reports.items()}
    assert bits["q8_0"] == 8.5 and bits["q4_0"] == 4.5 and bits["q4_1"] == 5.0
    assert bits["int4"] == 4.5 and bits["nf4"] == 4.5 and bits["int8"] == 8 + 32 / w.size
    for r in reports.values():
        assert set(r) == {"format", "mse", "max_abs", "bytes", "bits_per_param"}
        assert r["bytes"] * 8 == pytest.approx(r["bits_per_param"] * w.size)
    assert max(reports[k]["mse"] for k in ("int8", "q8_0")) < min(
        reports[k]["mse"] for k in ("int4", "q4_0", "q4_1", "nf4"))
    assert reports["nf4"]["mse"] < reports["int4"]["mse"]  # same bits, normal weights


@pytest.mark.parametrize("call, words", [
    (lambda: get_format("int9"), "unknown quantization format 'int9'"),
    (lambda: quantize(np.ones((2, 64)), "int8", group_size=32), "takes the options"),
    (lambda: integer.int4_quantize(np.ones((2, 96)), group_size=64), "does not divide"),
    (lambda: integer.int4_quantize(np.ones((2, 96)), group_size=48), "is not one of"),
    (lambda: integer.int4_quantize(np.ones(64)), "2-D"),
    (lambda: integer.int8_quantize(np.ones(5), per_channel=True), "2-D"),
    (lambda: integer.int8_asym_quantize(np.ones((2, 2, 2)), per_channel=True), "2-D"),
    (lambda: fp8.fp8_quantize(np.ones(4), per_channel=True), "2-D"),
    (lambda: gguf_blocks.q4_0_quantize(np.ones((2, 33))), "multiple of 32"),
    (lambda: gguf_blocks.q8_0_dequantize(np.zeros(35, np.uint8)), "multiple of 34"),
    (lambda: fp8.encode([1.0], "e3m4"), "unknown FP8 format"),
    (lambda: integer.pack_int4([1, 2, 3]), "even count"),
    (lambda: integer.pack_int4([9, 0]), "[-8, 7]"),
    (lambda: integer.int8_quantize(np.array(["a"])), "dtype"),
    (lambda: integer.int8_quantize(np.zeros((0, 4))), "empty"),
    (lambda: error_report(np.array([[1.0, np.nan]]), "int8"), "inf or NaN"),
    (lambda: gguf_blocks.q8_0_quantize(np.full(32, np.inf)), "inf or NaN"),
    (lambda: integer.int4_dequantize(integer.int8_quantize(np.ones(4))), "reads 'int4'"),
])
def test_bad_input_is_one_sentence(call, words):
    with pytest.raises(UserError) as e:
        call()
    assert words in str(e.value) and str(e.value).count(". ") == 0
