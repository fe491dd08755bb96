/*
 * kiln's batch entry points, compiled into the same library as tl2cgen's generated code.
 *
 * kiln generates kiln_model.h beside this file from tl2cgen's predict(): the model's sizes and
 * types, kiln_prologue (threshold quantization of one row, when enabled), KILN_UNITS (the
 * translation units' functions, each adding its trees' outputs to a row's result) and
 * kiln_epilogue (tree averaging and base scores). predict() itself runs them row by row; kiln
 * runs each unit over a block of rows before the next unit, so one unit's code stays in the
 * instruction cache for the whole block, which is what makes big models fast on big batches.
 *
 * kiln_predict_f32 / kiln_predict_f64 read `num_row` rows of KILN_NUM_FEATURE values (NaN means
 * missing) and write KILN_NUM_OUTPUT values per row to `out`, after the model's postprocessor
 * (sigmoid, softmax, ...). Blocks are spread over up to `num_thread` OpenMP threads when the
 * batch holds enough work.
 */
#include <stdint.h>
#include <string.h>

#include "header.h"
#include "kiln_model.h"

#define KILN_NUM_OUTPUT (N_TARGET * MAX_N_CLASS)
/* Below this many row x tree visits (about 100 microseconds of work), threads cost more than they save. */
#define KILN_PARALLEL_WORK 100000

int32_t kiln_num_output(void) { return KILN_NUM_OUTPUT; }

static void kiln_predict_block(union Entry* rows, int64_t count, KILN_LEAF_T* out) {
  for (int64_t r = 0; r < count; ++r) {
    memset(out + r * KILN_NUM_OUTPUT, 0, sizeof(KILN_LEAF_T) * KILN_NUM_OUTPUT);
    kiln_prologue(rows + r * KILN_NUM_FEATURE);
  }
#define KILN_RUN_UNIT(unit)                                                  \
  for (int64_t r = 0; r < count; ++r) {                                     \
    unit(rows + r * KILN_NUM_FEATURE, out + r * KILN_NUM_OUTPUT);           \
  }
  KILN_UNITS(KILN_RUN_UNIT)
#undef KILN_RUN_UNIT
  for (int64_t r = 0; r < count; ++r) {
    kiln_epilogue(out + r * KILN_NUM_OUTPUT);
    postprocess(out + r * KILN_NUM_OUTPUT);
  }
}

#define KILN_DEFINE_PREDICT(NAME, INPUT_T)                                                           \
  void NAME(const INPUT_T* data, int64_t num_row, KILN_LEAF_T* out, int32_t num_thread) {           \
    const int64_t num_block = (num_row + KILN_BLOCK_ROWS - 1) / KILN_BLOCK_ROWS;                     \
    const int threads = (num_row * KILN_NUM_TREE >= KILN_PARALLEL_WORK && num_block > 1) ? num_thread : 1; \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")                \
    for (int64_t block = 0; block < num_block; ++block) {                                          \
      union Entry rows[KILN_BLOCK_ROWS * KILN_NUM_FEATURE];                                          \
      const int64_t first = block * KILN_BLOCK_ROWS;                                                 \
      const int64_t count = num_row - first < KILN_BLOCK_ROWS ? num_row - first : KILN_BLOCK_ROWS;   \
      const INPUT_T* values = data + first * KILN_NUM_FEATURE;                                       \
      for (int64_t j = 0; j < count * KILN_NUM_FEATURE; ++j) {                                       \
        if (values[j] != values[j]) {                                                                \
          rows[j].missing = -1;                                                                      \
        } else {                                                                                     \
          rows[j].fvalue = (KILN_THRESHOLD_T)values[j];                                              \
        }                                                                                            \
      }                                                                                              \
      kiln_predict_block(rows, count, out + first * KILN_NUM_OUTPUT);                                \
    }                                                                                                \
  }

KILN_DEFINE_PREDICT(kiln_predict_f32, float)
KILN_DEFINE_PREDICT(kiln_predict_f64, double)
