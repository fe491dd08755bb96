"""kiln's CPU compile pipeline: layout rewrite, fusion, tuned records or default rules, lowering.

    from_onnx -> onnx_arithmetic -> float32_sums -> to_nchwc -> DispatchSampling -> DispatchSortScan
      -> LegalizeOps (NonMaxSuppression, RoiAlign: kernels/) -> AnnotateTIROpPattern
      -> FoldConstant -> FuseOps -> FuseTIR -> DeadCodeElimination -> [MetaScheduleApplyDatabase]
      -> schedule_module (the rules below) -> propagate_nan_pass (schedules/nan.py)
      -> TVM's cpu_generic lowering and finalize passes

Each fused PrimFunc is scheduled by the first rule that applies; the rule's name is recorded on
it as the `kiln.rule` attribute (see `rules_used`). A PrimFunc with a loop of symbolic extent (a shape
known only at run time) or an opaque block (an extern or hand-written kernel) gets no rule: it stays with TVM's
default handling, as in TVM's own pipeline."""

from __future__ import annotations

import collections
import logging

import tvm
from tvm import relax, tirx
from tvm.s_tir import Schedule

from kiln.compiler.backends.tvm.kernels import nms, roi_align
from kiln.compiler.backends.tvm.rewrite.accumulate import float32_sums
from kiln.compiler.backends.tvm.rewrite.arithmetic import onnx_arithmetic
from kiln.compiler.backends.tvm.rewrite.layout import to_nchwc
from kiln.compiler.backends.tvm.schedules.common import (CpuSpec, Rule, SymbolicExtent, cpu_spec, has_opaque_block,
                                                       with_int32_indices)
from kiln.compiler.backends.tvm.schedules.conv import CONV2D_INT8, CONV2D_NCHWC, DEPTHWISE_INT8, DEPTHWISE_NCHWC
from kiln.compiler.backends.tvm.schedules.elementwise import ELEMENTWISE
from kiln.compiler.backends.tvm.schedules.group_conv import GROUP_CONV2D
from kiln.compiler.backends.tvm.schedules.nan import propagate_nan_pass
from kiln.compiler.backends.tvm.schedules.reduction import REDUCTION
from kiln.compiler.backends.tvm.schedules.softmax import SOFTMAX
from kiln.compiler.backends.tvm.schedules.winograd import CONV2D_WINOGRAD, CONV2D_WINOGRAD_INT8

RULES: tuple[Rule, ...] = (CONV2D_INT8, DEPTHWISE_INT8, CONV2D_WINOGRAD_INT8, CONV2D_WINOGRAD, CONV2D_NCHWC,
                           DEPTHWISE_NCHWC, GROUP_CONV2D, SOFTMAX, REDUCTION, ELEMENTWISE)
RULE_ATTR, TUNED = "kiln.rule", "tuned"
log = logging.getLogger("kiln.schedules")


def rule_for(sch: Schedule) -> Rule | None:
    if has_opaque_block(sch):
        return None
    try:
        return next((rule for rule in RULES if rule.applies(sch)), None)
    except SymbolicExtent:
        return None


def schedule_primfunc(func: tirx.PrimFunc, spec: CpuSpec) -> tirx.PrimFunc:
    """`func` scheduled by the first rule that applies, tagged with its name."""
    sch = Schedule(func)
    rule = rule_for(sch)
    if rule is None:
        return func
    if rule.int32_indices:
        sch = Schedule(with_int32_indices(func))
    rule.apply(sch, spec)
    return sch.mod["main"].with_attr(RULE_ATTR, rule.name)


def schedule_module(spec: CpuSpec) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="KilnScheduleCPU")
    def apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        scheduled = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or _attr(func, RULE_ATTR):
                continue
            if _attr(func, "tirx.is_scheduled"):  # applied from tuning records
                scheduled[gv] = func.with_attr(RULE_ATTR, TUNED)
                continue
            try:
                scheduled[gv] = schedule_primfunc(func, spec)
            except SymbolicExtent as exc:
                log.debug("kiln: %s keeps TVM's default schedule (%s)", gv.name_hint, exc)
            except (RuntimeError, ValueError, TypeError) as exc:  # a rule bug (ScheduleError...) never breaks a build
                log.warning("kiln: no schedule for %s (%s: %s); it runs unscheduled", gv.name_hint,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        for gv, func in scheduled.items():
            mod[gv] = func
        return mod

    return apply


def _attr(func: tirx.PrimFunc, name: str):
    return func.attrs.get(name) if func.attrs is not None else None


def fuse(mod: tvm.IRModule, target, integer: list[dict] | None = None) -> tvm.IRModule:
    """The graph-level steps: NCHWc rewrite (with integer kernels for quantized convs, reported into
    `integer`), sort/scan/sampling ops dispatched to TOPI (LegalizeOps has no rule for TopK, CumSum,
    multinomial sampling), legalization to TIR (NonMaxSuppression and RoiAlign by kiln's kernels), fusion. Tuning tasks are this output's PrimFuncs."""
    with target:
        mod = to_nchwc(float32_sums(onnx_arithmetic(mod)), cpu_spec(target), integer)
        mod = tvm.transform.Sequential([
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps({"relax.vision.all_class_non_max_suppression": nms.legalize,
                                         "relax.vision.roi_align": roi_align.legalize}),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
        ])(mod)
        fused = tvm.transform.Sequential([relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
        if relax.analysis.check_well_formed(mod) and not relax.analysis.check_well_formed(fused):
            # TVM 0.27's FuseOps can move a fused call above the match_cast that defines a dim it reads (a Range
            # whose length is computed at run time, fused with the math before it); VMShapeLower then fails
            log.debug("kiln: fusion left a binding before a definition it reads; the ops stay unfused")
            fused = mod
        return relax.transform.DeadCodeElimination()(fused)


def cpu_pipeline(target, database=None, rules: dict[str, int] | None = None,
                 integer: list[dict] | None = None) -> tvm.transform.Pass:
    """The relax_pipeline for tvm.compile: kiln's rules, after the best tuning records in `database`.

    `rules`, when given, is filled with how many PrimFuncs each rule scheduled (see `rules_used`);
    `integer` with what each quantized conv became (see `layout.to_nchwc`)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="KilnCPUPipeline")
    def apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = fuse(mod, target, integer)
        with target:
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            mod = schedule_module(cpu_spec(target))(mod)
            mod = propagate_nan_pass()(mod)
            if rules is not None:
                rules.update(collections.Counter(rules_used(mod).values()))
            passes = [*cpu_generic.dataflow_lower_passes(target), *cpu_generic.finalize_passes(target)]
            return tvm.transform.Sequential(passes)(mod)

    return apply


def rules_used(mod: tvm.IRModule) -> dict[str, str]:
    """PrimFunc name -> the rule that scheduled it ("tuned" for tuning records; "none" if no rule did)."""
    return {gv.name_hint: str(_attr(f, RULE_ATTR) or "none") for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc)}
