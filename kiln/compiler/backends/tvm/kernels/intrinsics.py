"""The int8 dot-product instructions kiln's integer kernels are tensorized with: one DotProduct per target
Int8Isa (`dot_product`).

Each computes C[i] += sum_k A[k] * B[i, k] for i < lanes, k < 4: four activations, broadcast,
against a lanes x 4 block of int8 weights, into int32 accumulators. So integer kernels keep the
output channels in blocks of `lanes` and reduce input channels in groups of 4. The integer Winograd
conv's AVX2 pair multiply-add is the same with two int16 values for the four int8 ones."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from kiln.targets.isa import Int8Isa

GROUP = 4  # activations per dot product
PAIR = 2  # int16 values per pair multiply-add (the integer Winograd conv's)


@dataclass(frozen=True)
class DotProduct:
    name: str  # what the manifest reports
    intrinsic: str  # the registered TensorIntrin
    lanes: int  # int32 accumulators per instruction: the output channel block
    activations: str  # dtype of the activations it takes: "uint8" or "int8"
    # vpmaddubsw sums two u8 x s8 products into a saturating int16: weight pairs must keep
    # 255 * (|w0| + |w1|) <= 32767, i.e. |w0| + |w1| <= 128 (7-bit weights always do).
    pair_limit: int | None = None
    # The int16 pair multiply-add (C[i] += A[0] * B[i, 0] + A[1] * B[i, 1]) of the integer Winograd conv, where
    # it beats the int8 dot product (see integer.conv2d_winograd_int8), and its name in reports; None: every
    # quantized conv is direct.
    pair_intrinsic: str | None = None
    pair_name: str | None = None
    # The multiply-adds and input channels from which a conv runs as integer Winograd: below them its
    # transforms and int16 weights (32 bytes per channel pair where the direct kernel reads 9) cost more than
    # its 2.25x fewer products save.
    pair_min_work: int = 0
    pair_min_channels: int = 0
    # Direct convs tile pixels x channel blocks, so each loaded weight vector serves several pixels; False:
    # channel blocks first (conv.int8_conv_tile says why).
    pixel_tiles: bool = False
    # The same dot product on half the lanes, for convs whose output channels are not in whole blocks of
    # `lanes` (MobileNetV2's 24 on AVX-512): they would stay float, and their layout transforms and
    # float-rounded results would sit between integer kernels.
    narrow: DotProduct | None = None

    def for_lanes(self, lanes: int) -> DotProduct:
        """The dot product of a kernel whose output channel block is `lanes` wide."""
        return self if lanes == self.lanes or self.narrow is None else self.narrow


def _buffers(lanes: int, activations: str, group: int, weights: str):
    """The operand shapes; C is "local" because kiln's kernels keep their accumulators in registers."""
    return ((group,), activations), ((lanes, group), weights), ((lanes,), "int32")


def _desc(lanes: int, activations: str, group: int = GROUP, weights: str = "int8"):
    """C[i] += sum_k A[k] * B[i, k] for i < lanes, k < group, in int32."""
    (a_shape, a_dtype), (b_shape, b_dtype), (c_shape, c_dtype) = _buffers(lanes, activations, group, weights)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, a_dtype, offset_factor=1)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1)
        C = T.match_buffer(c, c_shape, c_dtype, offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _pmaddubsw_impl(lanes: int, pmaddubsw: str, pmaddwd: str):
    """u8 x s8 pairs summed into int16 (pmaddubsw), then int16 pairs into int32 (pmaddwd with ones)."""
    u8_vector, i8_vector, i16_vector, i32_vector = (f"{t}x{n}" for t, n in (
        ("uint8", 4 * lanes), ("int8", 4 * lanes), ("int16", 2 * lanes), ("int32", lanes)))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            broadcast = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                                      dtype=u8_vector)
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(pmaddubsw), broadcast,
                                            B.vload([0, 0], dtype=i8_vector), dtype=i16_vector)
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmaddwd), pairs, T.broadcast(T.int16(1), 2 * lanes), dtype=i32_vector)

    return impl


def _vpdpbusd_impl(lanes: int, vpdpbusd: str):
    """u8 x s8 quadruples summed straight into the int32 accumulators (VNNI)."""
    i8_vector, i32_vector = f"int8x{4 * lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(vpdpbusd), C.vload([0], dtype=i32_vector),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                              dtype=i8_vector),
                B.vload([0, 0], dtype=i8_vector), dtype=i32_vector)

    return impl


@T.prim_func(s_tir=True)
def _sdot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), C.vload([0], dtype="int32x4"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16"),
            B.vload([0, 0], dtype="int8x16"), dtype="int32x4")


@T.prim_func(s_tir=True)
def _dp4a_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4,), "int8", offset_factor=1)
    C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        for k in T.serial(0, 4):
            with T.sblock("update"):
                vk = T.axis.remap("R", [k])
                C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")


@T.prim_func(s_tir=True)
def _dp4a_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4,), "int8", offset_factor=1)
    C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                   dtype="int32")


@T.prim_func(s_tir=True)
def _pmaddwd_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (PAIR,), "int16", offset_factor=1)
    B = T.match_buffer(b, (8, PAIR), "int16", offset_factor=1)
    C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:8], A[0:PAIR], B[0:8, 0:PAIR])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"),
            B.vload([0, 0], dtype="int16x16"), dtype="int32x8")


AVX2_DOT = DotProduct("avx2-vpmaddubsw", "kiln_dot_8x4_avx2", 8, "uint8", pair_limit=128,
                      pair_intrinsic="kiln_pair_8x2_avx2", pair_name="avx2-vpmaddwd-winograd",
                      pair_min_work=1 << 29, pair_min_channels=128)
AVX512_DOT = DotProduct("avx512-vpmaddubsw", "kiln_dot_16x4_avx512", 16, "uint8", pair_limit=128, narrow=AVX2_DOT)
VNNI_DOT = DotProduct("avx512-vnni-vpdpbusd", "kiln_dot_16x4_vnni", 16, "uint8", pixel_tiles=True,
                      narrow=DotProduct("avx512-vnni-vpdpbusd-ymm", "kiln_dot_8x4_vnni", 8, "uint8",
                                        pixel_tiles=True))
SDOT = DotProduct("neon-sdot", "kiln_dot_4x4_sdot", 4, "int8")
# One thread per output channel, each summing four int8 products per instruction: the channel block
# (4) only sets the layout, the intrinsic covers the 4 products of one output.
DP4A = DotProduct("cuda-dp4a", "kiln_dp4a", 4, "int8")


@functools.cache
def register_intrinsics() -> None:
    """Register every dot product with TVM, once per process; the compile pipelines call it before
    scheduling, since tensorize looks the intrinsics up by name."""
    TensorIntrin.register("kiln_pair_8x2_avx2", _desc(8, "int16", PAIR, "int16"), _pmaddwd_impl)
    TensorIntrin.register(DP4A.intrinsic, _dp4a_desc, _dp4a_impl)
    for isa, impl in (
            (AVX2_DOT, _pmaddubsw_impl(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")),
            (AVX512_DOT, _pmaddubsw_impl(16, "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")),
            (VNNI_DOT, _vpdpbusd_impl(16, "llvm.x86.avx512.vpdpbusd.512")),
            (VNNI_DOT.narrow, _vpdpbusd_impl(8, "llvm.x86.avx512.vpdpbusd.256")),
            (SDOT, _sdot_impl)):
        TensorIntrin.register(isa.intrinsic, _desc(isa.lanes, isa.activations), impl)


def dot_product(isa: Int8Isa) -> DotProduct | None:
    """The dot product integer kernels use on a target with this Int8Isa; None where kiln has none (x86 without
    AVX2, AArch64 without the dot-product extension): its quantized ops stay in float."""
    return {Int8Isa.AVX2: AVX2_DOT, Int8Isa.AVX512: AVX512_DOT, Int8Isa.VNNI: VNNI_DOT, Int8Isa.SDOT: SDOT,
            Int8Isa.DP4A: DP4A}.get(isa)
