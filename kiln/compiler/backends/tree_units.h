/*
 * The trees as tl2cgen writes them: nested ifs, one function per translation unit (KILN_UNITS in
 * kiln_model.h), each adding its trees' outputs to one row's result. kiln runs each unit over a
 * block of rows before the next, so one unit's code stays in the instruction cache for the block.
 * Used when calibration data annotates the branches (LIKELY/UNLIKELY), which only nested ifs have.
 */
typedef union Entry kiln_value;
#define KILN_VALUES_PER_FEATURE 1
#define KILN_ROW_VALUES KILN_NUM_FEATURE

static inline void kiln_set_value(kiln_value* value, KILN_THRESHOLD_T x, int32_t feature) {
  (void)feature;
  if (x != x) {
    value->missing = -1;
  } else {
    value->fvalue = x;
  }
}

static void kiln_run_trees(kiln_value* rows, int64_t count, KILN_LEAF_T* out) {
  for (int64_t r = 0; r < count; ++r) kiln_prologue(rows + r * KILN_NUM_FEATURE);
#define KILN_RUN_UNIT(unit)                                                  \
  for (int64_t r = 0; r < count; ++r) {                                     \
    unit(rows + r * KILN_NUM_FEATURE, out + r * KILN_NUM_OUTPUT);           \
  }
  KILN_UNITS(KILN_RUN_UNIT)
#undef KILN_RUN_UNIT
}
