"""smashlib's int8 decode kernel (smashlib.layers.int8_vnni_kernel) and gptq_decode_kernel."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from smashlib import SmashConfig, SmashedModel, smash
from smashlib.gptq.solver import gptq_quantize
from smashlib.layers import int8_vnni_kernel, lowbit_kernels
from smashlib.layers.packed_int import PackedLinear
from tests.tiny_models import build_tiny, tiny_inputs

REASON = int8_vnni_kernel.unavailable_reason()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"smashlib's VNNI kernel {REASON}")


def int8_layer(out_features: int = 96, in_features: int = 256, decode_kernel: str = "auto") -> PackedLinear:
    weight = torch.randn(out_features, in_features) * 0.05
    quantized = gptq_quantize(weight, torch.eye(in_features), 8, -1, act_order=False)
    layer = PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 8, -1, None, torch.randn(out_features))
    layer.decode_kernel = decode_kernel
    return layer


def rtn_config(**values) -> SmashConfig:
    return SmashConfig({"quantizer": "gptq", "gptq_method": "rtn", "gptq_weight_bits": 8, "gptq_group_size": -1,
                        **values}, device="cpu")


def kernel_names(model) -> set[str]:
    return {m.kernel_name for m in model.modules() if isinstance(m, PackedLinear)}


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_its_reference_and_the_exact_product(rows, dtype):
    """The C++ product is the plain-PyTorch one (int16 blocks of 32, exact int32 sums) to float summation order,
    and both are the exact product of the int8 weight to ~1e-4 (the int16 rounding), extreme weights included."""
    x = (torch.randn(rows, 576) * torch.linspace(0.1, 8.0, 576)).to(dtype)
    x[0, 5] = 300.0  # an outlier: costs precision in its own block only
    weight = torch.randint(-128, 128, (1536, 576), dtype=torch.int8)
    weight[0, :32], weight[1, :32] = -128, 127
    scales = torch.rand(1536) / 100
    got = int8_vnni_kernel.int8_vnni_matvec(x, weight, scales)
    assert got.dtype == torch.float32 and got.shape == (rows, 1536)
    expected = int8_vnni_kernel.reference_matvec(x, weight, scales)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    exact = (x.double() @ weight.double().T) * scales.double()
    assert (got.double() - exact).abs().max() <= 1e-4 * exact.abs().max()


@needs_kernel
@pytest.mark.parametrize("tokens", [1, 8, 9, 64])
def test_8bit_layers_decode_on_the_kernel_and_prefill_on_the_gemm(tokens):
    layer, plain = int8_layer(), int8_layer(decode_kernel="weight_only")
    plain.load_state_dict(layer.state_dict())
    assert layer.kernel_name == "int8_vnni_cpu" and plain.kernel_name == "int8pack_cpu"
    x = torch.randn(1, tokens, 256)
    expected = F.linear(x, layer.dequantize(), layer.bias)
    if tokens > lowbit_kernels.GEMM_ROWS and layer.kernel.gemm_dtype == torch.bfloat16:
        assert torch.equal(layer(x), plain(x))  # prefill shapes: the very same bf16 GEMM either way
    elif tokens > lowbit_kernels.GEMM_ROWS:  # the library's fp32 GEMM, scales folded into the weight
        assert (layer(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
    else:  # decode shapes: closer to the exact product than the weight-only kernel's bf16 activations
        assert (layer(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
        assert (layer(x) - expected).abs().max() < (plain(x) - expected).abs().max()


@needs_kernel
def test_the_built_library_is_stamped_with_its_source_and_is_rebuilt_when_that_changes(monkeypatch):
    """A later process loads the library directly only if it was built from this very source and flags."""
    folder = int8_vnni_kernel.build_folder()
    assert (folder / "source.sha256").read_text() == int8_vnni_kernel._source_stamp()
    assert (folder / f"smashlib_{int8_vnni_kernel._OP}.so").is_file()
    calls = []
    monkeypatch.setattr(int8_vnni_kernel, "_compile", lambda where: calls.append(where) or "compiled (stub)")
    monkeypatch.setattr(int8_vnni_kernel, "_source_stamp", lambda: "another source")
    assert int8_vnni_kernel._build_now() == (None, "compiled (stub)") and calls == [folder]


@needs_kernel
def test_kernel_is_one_op_under_torch_compile():
    layer = int8_layer()
    x = torch.randn(1, 256)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: no break at the C++ call
    assert torch.equal(compiled(x), eager)


@needs_kernel
@pytest.mark.parametrize("grid,kernel", [({}, "int8_vnni_cpu"),
                                         ({"gptq_weight_bits": 4, "gptq_group_size": 32}, "int4_vnni_cpu")])
def test_smashed_models_decode_on_the_kernel_before_and_after_loading(tmp_path, grid, kernel):
    smashed = smash(build_tiny("llama"), rtn_config(**grid), verbose=False)
    assert kernel_names(smashed.model) == {kernel}
    ids = tiny_inputs("llama")["input_ids"][:1, :4]
    with torch.no_grad():
        before = smashed.generate(ids, max_new_tokens=4, do_sample=False)
    smashed.save_pretrained(tmp_path / "saved")
    loaded = SmashedModel.from_pretrained(tmp_path / "saved")
    assert kernel_names(loaded.model) == {kernel}
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, max_new_tokens=4, do_sample=False), before)


def test_weight_only_keeps_pytorchs_kernel(tmp_path):
    smashed = smash(build_tiny("llama"), rtn_config(gptq_decode_kernel="weight_only"), verbose=False)
    assert kernel_names(smashed.model) == {"int8pack_cpu"}
    smashed.save_pretrained(tmp_path / "saved")
    assert kernel_names(SmashedModel.from_pretrained(tmp_path / "saved").model) == {"int8pack_cpu"}


def test_where_the_kernel_cannot_run_8bit_layers_use_pytorchs(monkeypatch, caplog):
    """Another CPU, no compiler, a failed build: the weight-only kernel runs, and the reason is logged."""
    monkeypatch.setitem(int8_vnni_kernel._BUILT, "int8_vnni_matvec",
                        (None, "needs a CPU with AVX2 and FMA (missing here: avx2)"))
    lowbit_kernels._note_once.cache_clear()
    with caplog.at_level("INFO", logger="smashlib.layers.lowbit_kernels"):
        smashed = smash(build_tiny("llama"), rtn_config(), verbose=False)
    assert kernel_names(smashed.model) == {"int8pack_cpu"}
    assert "missing here: avx2" in caplog.text
    with pytest.raises(RuntimeError, match="missing here: avx2"):
        int8_vnni_kernel.int8_vnni_matvec(torch.zeros(1, 32), torch.zeros(1, 32, dtype=torch.int8), torch.ones(1))


@pytest.mark.parametrize(("flags", "chosen"), [
    ({"avx2", "fma", "avx512f", "avx512vl", "avx512_vnni"}, "avx512_vnni"),
    ({"avx2", "fma", "avx512f"}, "avx2"),  # AVX-512 without VNNI (Skylake-X): the AVX2 build
    ({"avx2", "fma"}, "avx2"),
    ({"sse4_2", "avx"}, None),
])
def test_the_build_is_chosen_by_the_cpus_flags(monkeypatch, flags, chosen):
    """VNNI's build where the CPU has it, AVX2's elsewhere (each in its own folder), a reason without AVX2."""
    monkeypatch.setattr(int8_vnni_kernel.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(int8_vnni_kernel.cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert int8_vnni_kernel.instruction_set() == chosen
    if chosen is None:
        assert "needs a CPU with AVX2 and FMA (missing here: avx2, fma)" == int8_vnni_kernel._hardware_reason()
        return
    assert int8_vnni_kernel.build_folder().name == f"int8_vnni_matvec-{chosen}"
    assert ("-mavx512vnni" in int8_vnni_kernel._compile_flags()) == (chosen == "avx512_vnni")


def test_folders_saved_before_the_kernel_keep_the_weight_only_kernel():
    """A gptq config of schema 2 (before gptq_decode_kernel) loads as weight_only: the outputs it gave."""
    old = {"schema_version": 2, "device": "cpu", "values": {"quantizer": "gptq", "gptq_weight_bits": 8}, "components": {}}
    assert SmashConfig.from_json_dict(old)["gptq_decode_kernel"] == "weight_only"
    assert SmashConfig({"quantizer": "gptq"})["gptq_decode_kernel"] == "auto"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_prefill_multiplies_in_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, native_bf16):
    """Long calls convert the int8 matrix for a GEMM: bf16 on CPUs with bf16 units, fp32 elsewhere (where bf16
    GEMMs are emulated, 6x slower); either way the product of the int8 weight, to the GEMM dtype's rounding."""
    monkeypatch.setattr(lowbit_kernels, "gemm_dtype", lambda: torch.bfloat16 if native_bf16 else torch.float32)
    layer = int8_layer(decode_kernel="weight_only")
    kernel = lowbit_kernels.Int8PackCPU(layer)
    assert kernel.gemm_dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    x = torch.randn(lowbit_kernels.GEMM_ROWS + 1, layer.in_features)
    exact = F.linear(x.double(), kernel.weight.double()) * kernel.scales.double() + layer.bias.double()
    error = (kernel(x).double() - exact).abs().max() / exact.abs().max()
    assert error < (1e-2 if native_bf16 else 1e-5)


def test_the_float32_prefill_is_one_op_in_a_compiled_graph(monkeypatch):
    """On CPUs without bf16 units the fp32 prefill product is an opaque op (Inductor's own conversion of the
    int8 matrix was slower than eager): torch.compile keeps one graph and gives the eager result."""
    monkeypatch.setattr(lowbit_kernels, "gemm_dtype", lambda: torch.float32)
    kernel = lowbit_kernels.Int8PackCPU(int8_layer(decode_kernel="weight_only"))
    x = torch.randn(lowbit_kernels.GEMM_ROWS + 4, 256)
    compiled = torch.compile(lambda rows: kernel(rows), fullgraph=True, backend="inductor")
    assert torch.allclose(compiled(x), kernel(x), rtol=1e-6, atol=1e-6)
    traced = []

    def record(graph, example_inputs):
        traced.extend(node.target for node in graph.graph.nodes if node.op == "call_function")
        return graph

    torch._dynamo.reset()
    torch.compile(lambda rows: kernel(rows), fullgraph=True, backend=record)(x)
    assert torch.ops.smashlib.int8_float32_gemm.default in traced


@needs_kernel
@pytest.mark.parametrize("shape", [(48, 256), (37, 64), (1, 32)])
def test_the_prefill_gemms_equal_the_float32_product_of_the_dequantized_weight(shape):
    """int8_gemm and int4_gemm (prefill in fp32: dequantized in the library, scales folded in, y^T = W x^T)
    give F.linear on the dequantized weight to fp32 rounding, for any number of rows and tokens."""
    torch.manual_seed(0)
    n, k = shape
    x = torch.randn(23, k)
    q8, s8 = torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n) * 0.01
    y8 = torch.ops.smashlib.int8_gemm(x, q8, s8)
    assert y8.shape == (23, n) and y8.is_contiguous()
    torch.testing.assert_close(y8, F.linear(x, q8.float() * s8[:, None]), rtol=1e-5, atol=1e-5)
    layout = int8_vnni_kernel.int4_kernel_layout(torch.randint(0, 16, (n, k)), torch.rand(n, k // 32) * 0.01,
                                                 torch.randint(0, 16, (n, k // 32)))
    torch.testing.assert_close(torch.ops.smashlib.int4_gemm(x.bfloat16(), *layout),
                               F.linear(x.bfloat16().float(), int8_vnni_kernel.int4_dequantize(*layout)), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_kernels_float32_prefill_is_one_op_in_a_compiled_graph(monkeypatch):
    monkeypatch.setattr(lowbit_kernels, "gemm_dtype", lambda: torch.float32)
    kernel = lowbit_kernels.Int8VnniCPU(int8_layer())
    x = torch.randn(lowbit_kernels.GEMM_ROWS + 4, 256)
    traced = []

    def record(graph, example_inputs):
        traced.extend(node.target for node in graph.graph.nodes if node.op == "call_function")
        return graph

    torch._dynamo.reset()
    assert torch.equal(torch.compile(lambda rows: kernel(rows), fullgraph=True, backend=record)(x), kernel(x))
    assert torch.ops.smashlib.int8_gemm in traced


# ====================================================================== 2-4 bits
def four_bit_layer(out_features: int = 80, in_features: int = 256, group_size: int = 32) -> PackedLinear:
    weight = torch.randn(out_features, in_features) * 0.05
    quantized = gptq_quantize(weight, torch.eye(in_features), 4, group_size, act_order=False)
    return PackedLinear.from_integers(quantized.q, quantized.scales, quantized.zeros, 4, group_size, None, None)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_4bit_kernel_equals_its_reference_and_its_weight_exactly_dequantized(rows, dtype):
    """int4_matvec is the plain-PyTorch product of the int16 activation blocks (to float summation order) and the
    exact product to ~1e-4; int4_dequantize rebuilds the weight bit for bit from the kernel's layout."""
    torch.manual_seed(0)
    q = torch.randint(0, 16, (48, 256), dtype=torch.uint8)
    q[0], q[1] = 0, 15  # the extremes of the grid
    scales = (torch.rand(48, 8) * 0.01 + 1e-3).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (48, 8), dtype=torch.uint8)
    packed, kernel_scales, kernel_zeros = int8_vnni_kernel.int4_kernel_layout(q, scales, zeros)
    weight = scales.float().repeat_interleave(32, 1) * (q.float() - zeros.float().repeat_interleave(32, 1))
    assert torch.equal(int8_vnni_kernel.int4_dequantize(packed, kernel_scales, kernel_zeros), weight)
    x = (torch.randn(rows, 256) * torch.linspace(0.1, 10, 256)).to(dtype)
    y = int8_vnni_kernel.int4_matvec(x, packed, kernel_scales, kernel_zeros)
    reference = int8_vnni_kernel.reference_int4_matvec(x, weight)
    exact = x.float() @ weight.T
    assert y.dtype == torch.float32 and y.shape == (rows, 48)
    assert (y - reference).abs().max() <= 1e-6 * reference.abs().max()
    assert (y - exact).abs().max() <= 1e-4 * exact.abs().max()


@needs_kernel
def test_4bit_kernel_is_one_op_under_torch_compile():
    layer = four_bit_layer()
    for tokens in (1, 16):  # the mat-vec op, and the dequantize op before the GEMM
        x = torch.randn(tokens, 256)
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        assert torch.equal(compiled(x), eager)
    torch._dynamo.reset()


def test_where_the_kernel_cannot_run_4bit_layers_use_pytorchs(monkeypatch):
    monkeypatch.setitem(int8_vnni_kernel._BUILT, "int8_vnni_matvec", (None, "needs a C++ compiler (g++) to build it once"))
    smashed = smash(build_tiny("llama"), rtn_config(gptq_weight_bits=4, gptq_group_size=32), verbose=False)
    assert kernel_names(smashed.model) == {"int4pack_cpu"}


def test_folders_saved_before_the_4bit_kernel_keep_pytorchs_int4_kernel():
    """A schema-3 config with decode_kernel "auto" meant smashlib's kernel for 8-bit layers only: it loads as
    "int8_only", so its 2-4-bit layers compute what they computed when saved."""
    old = {"schema_version": 3, "device": "cpu", "components": {},
           "values": {"quantizer": "gptq", "gptq_weight_bits": 4, "gptq_decode_kernel": "auto"}}
    assert SmashConfig.from_json_dict(old)["gptq_decode_kernel"] == "int8_only"
    old["values"]["gptq_decode_kernel"] = "weight_only"
    assert SmashConfig.from_json_dict(old)["gptq_decode_kernel"] == "weight_only"
