"""TE compute definitions of kiln's kernels (blocked float convs, Winograd, integer convs) and the
int8 dot-product tensor intrinsics their schedules tensorize with."""
