"""kiln's own CPU schedules for TVM Relax: an NCHW[x]c layout rewrite and one small named rule per
op family (conv2d, Winograd conv2d, depthwise, softmax, reduction, elementwise), applied to every fused PrimFunc.

`pipeline.cpu_pipeline` assembles them; `ScheduleMode` is the user's choice between them and
TVM's own (unscheduled) CPU code.
"""

from __future__ import annotations

import enum


class ScheduleMode(str, enum.Enum):
    NONE = "none"  # TVM's stock CPU pipeline: correct, unscheduled loops (for debugging kiln's rules)
    DEFAULT = "default"  # kiln's NCHWc layout and rules, plus tuning records where given
