/*
 * kiln's batch entry points, compiled into the same library as tl2cgen's main.c (the model's
 * sizes, base scores, tree averaging and postprocessor).
 *
 * kiln generates kiln_model.h beside this file: the model's sizes and types, kiln_epilogue (base
 * scores and tree averaging, taken from tl2cgen's predict()) and which tree code runs: kiln's own
 * node walker (tree_walk.h, KILN_WALK) or tl2cgen's nested ifs (tree_units.h). Either defines
 * kiln_value (one feature of a row as the trees read it), kiln_set_value and kiln_run_trees, which
 * adds all trees' outputs for a block of rows.
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

#if KILN_WALK
#include "tree_walk.h"
#else
#include "tree_units.h"
#endif

int32_t kiln_num_output(void) { return KILN_NUM_OUTPUT; }

static void kiln_predict_block(kiln_value* rows, int64_t count, KILN_LEAF_T* out) {
  memset(out, 0, sizeof(KILN_LEAF_T) * KILN_NUM_OUTPUT * count);
  kiln_run_trees(rows, count, out);
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
      kiln_value rows[KILN_BLOCK_ROWS * KILN_ROW_VALUES];                                            \
      const int64_t first = block * KILN_BLOCK_ROWS;                                                 \
      const int64_t count = num_row - first < KILN_BLOCK_ROWS ? num_row - first : KILN_BLOCK_ROWS;   \
      const INPUT_T* values = data + first * KILN_NUM_FEATURE;                                       \
      for (int64_t r = 0; r < count; ++r) {                                                          \
        for (int32_t f = 0; f < KILN_NUM_FEATURE; ++f) {                                             \
          kiln_set_value(rows + r * KILN_ROW_VALUES + f * KILN_VALUES_PER_FEATURE,                   \
                         (KILN_THRESHOLD_T)values[r * KILN_NUM_FEATURE + f], f);                     \
        }                                                                                            \
      }                                                                                              \
      kiln_predict_block(rows, count, out + first * KILN_NUM_OUTPUT);                                \
    }                                                                                                \
  }

KILN_DEFINE_PREDICT(kiln_predict_f32, float)
KILN_DEFINE_PREDICT(kiln_predict_f64, double)
