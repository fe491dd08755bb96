"""CUDA builds of QDQ models: the integer rewrite (NCHW4c integer kernels; float ops keep their layout),
then TVM's CUDA pipeline with one more dlight rule in front, for the integer convs:

    blockIdx/threadIdx over every output element . ic blocks . kh . kw . ic/4 . dp4a(4 products)

one thread per output (its int32 sum in a register), the requantization fused into the write-back.
The padding stays a separate kernel, since dp4a reads four bytes straight from a buffer."""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.s_tir import Schedule, dlight
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

from kiln.compiler.backends.tvm.kernels.compute import PAD
from kiln.compiler.backends.tvm.kernels.integer import INT8_CONV
from kiln.compiler.backends.tvm.kernels.intrinsics import DP4A
from kiln.compiler.backends.tvm.rewrite.layout import to_nchwc
from kiln.compiler.backends.tvm.schedules.common import (CpuSpec, block_names, blocks, extent, fuse_epilogue,
                                                       inline_spatial, largest_divisor, tensorize, with_int32_indices)

# The layout rewrite's parameters on a GPU: integer kernels in 4-channel blocks, float convs untouched.
GPU_SPEC = CpuSpec(lanes=DP4A.lanes, registers=1, max_accumulators=1, int8=DP4A, float_convs=False)
THREADS = 256
log = logging.getLogger("kiln.schedules")


class Int8ConvDp4a(GPUScheduleRule):
    def apply(self, func, target, _tunable: bool):
        if not isinstance(func, tvm.tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if INT8_CONV not in block_names(Schedule(func)):
            return None
        # 32-bit indices (as CUDA threads count), so the thread-bound loops and the dp4a intrinsic agree
        sch = Schedule(with_int32_indices(func))
        try:
            return _schedule(sch)
        except (RuntimeError, ValueError) as exc:  # a rule bug must not break the build: dlight's own rules follow
            log.warning("kiln: no dp4a schedule for an integer conv (%s: %s); dlight schedules it",
                        type(exc).__name__, str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "")
            return None


def _schedule(sch: Schedule) -> Schedule:
    inline_spatial(sch, keep=frozenset({INT8_CONV, PAD}))
    conv = sch.get_sblock(INT8_CONV)
    write_back = sch.cache_write(conv, 0, "local")
    fuse_epilogue(sch, write_back)
    *spatial, ico, _kh, _kw, _icg, k = sch.get_loops(conv)
    grid, thread = _split(sch, spatial)
    _bind(sch, grid, thread)
    sch.reverse_compute_at(write_back, thread)
    sch.decompose_reduction(conv, ico)
    tensorize(sch, k, DP4A.intrinsic)
    for block in blocks(sch):  # the padding, and any epilogue block the write-back could not take
        loops = sch.get_loops(block)
        if loops and sch.get(loops[0]).thread_binding is None:
            _bind(sch, *_split(sch, loops))
    return sch


def _split(sch: Schedule, loops):
    """`loops` fused, split into (blocks, threads): the most threads up to THREADS that divide the work
    evenly, since dp4a cannot be tensorized under the bounds check of an uneven split."""
    fused = sch.fuse(*loops)
    return sch.split(fused, factors=[None, largest_divisor(extent(sch, fused), THREADS)])


def _bind(sch: Schedule, grid, thread) -> None:
    sch.bind(grid, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")


def cuda_pipeline(target, integer: list[dict]) -> tvm.transform.Pass:
    """TVM's CUDA pipeline, after the integer rewrite when the module holds quantize ops (reported into
    `integer`)."""
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0, name="KilnCUDAPipeline")
    def apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            if _quantized(mod):
                mod = to_nchwc(mod, GPU_SPEC, integer)
            legalize = [p for p in cuda.legalize_passes(target) if not isinstance(p, dlight.ApplyDefaultSchedule)]
            schedule = dlight.ApplyDefaultSchedule(Int8ConvDp4a(), dlight.gpu.Matmul(), dlight.gpu.GEMV(),
                                                   dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
                                                   dlight.gpu.Fallback())
            return tvm.transform.Sequential([*cuda.library_dispatch_passes(target), *legalize, schedule,
                                             *cuda.dataflow_lower_passes(target), *cuda.finalize_passes(target)])(mod)

    return apply


def _quantized(mod: tvm.IRModule) -> bool:
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(
                isinstance(e, relax.Call) and getattr(e.op, "name", None) == "relax.quantize"))
    return any(found)
