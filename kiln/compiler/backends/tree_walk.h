/*
 * kiln's tree walker: the model as one array of nodes (kiln_trees.h, written by tree_nodes.py),
 * walked without a branch per node. Every split sends a row right when its value is >= the node's
 * threshold (NaN: to the node's default child), and leaves point to themselves, so a group of
 * KILN_TREES_PER_GROUP trees is walked for a fixed number of steps. The trees of a group are
 * independent chains of loads that the CPU overlaps (one row alone keeps it busy), and a group's
 * nodes stay in cache while every row of a block walks them.
 */
#include <math.h>
#include <stdint.h>

typedef struct {
  union {
    KILN_THRESHOLD_T threshold;  /* numerical split */
    int32_t quantized;           /* numerical split, thresholds as ranks (KILN_QUANTIZED) */
    KILN_LEAF_T value;           /* leaf of one value */
    uint32_t offset;             /* categorical split: into kiln_category_words; leaf vector: into kiln_leaf_vectors */
  } v;
  uint32_t split;                /* feature | KILN_SPLIT_* flags */
  int32_t child[2];             /* left, right; a leaf's are itself */
} kiln_node;

#define KILN_SPLIT_SLOT 0x1FFFFFFFu
#define KILN_SPLIT_CATEGORICAL 0x20000000u
#define KILN_SPLIT_MATCH_RIGHT 0x40000000u
#define KILN_SPLIT_DEFAULT_RIGHT 0x80000000u
/* The largest category treelite accepts: larger values, like negative ones, match no category. */
#define KILN_MAX_CATEGORY ((KILN_THRESHOLD_T)(1U << 24))

#include "kiln_trees.h"

/*
 * A row holds 3 values per feature (tree_nodes.py: VALUES_PER_FEATURE), so that every numerical
 * split is one comparison, missing values included: slot 0 sends a missing value left (NaN, or the
 * lowest rank), slot 1 right (+inf, or the highest rank). Slot 2 is 1 for a missing value and 0
 * otherwise, or, with ranks, the value itself for categorical splits.
 */
#define KILN_VALUES_PER_FEATURE 3
#define KILN_ROW_VALUES (KILN_VALUES_PER_FEATURE * KILN_NUM_FEATURE)
#if KILN_QUANTIZED
typedef union { KILN_THRESHOLD_T x; int32_t rank; } kiln_value;
#define KILN_CATEGORY_VALUE(row, slot) ((row)[slot].x)

/* 2i when x is the feature's i-th threshold, 2i-1 between thresholds i-1 and i: x < t_i is rank < 2i. */
static int32_t kiln_rank(KILN_THRESHOLD_T x, int32_t feature) {
  const KILN_THRESHOLD_T* thresholds = kiln_rank_thresholds + kiln_rank_begin[feature];
  const int32_t count = kiln_rank_begin[feature + 1] - kiln_rank_begin[feature];
  int32_t low = 0, high = count;
  while (low < high) {
    const int32_t mid = (low + high) / 2;
    if (thresholds[mid] < x) low = mid + 1; else high = mid;
  }
  return 2 * low - (low < count && thresholds[low] == x ? 0 : 1);
}

static inline void kiln_set_value(kiln_value* slots, KILN_THRESHOLD_T x, int32_t feature) {
  const int missing = x != x;
  const int32_t rank = missing ? 0 : kiln_rank(x, feature);
  slots[0].rank = missing ? INT32_MIN : rank;
  slots[1].rank = missing ? INT32_MAX : rank;
  slots[2].x = x;
}
#else
typedef KILN_THRESHOLD_T kiln_value;
#define KILN_CATEGORY_VALUE(row, slot) ((row)[slot])

static inline void kiln_set_value(kiln_value* slots, KILN_THRESHOLD_T x, int32_t feature) {
  (void)feature;
  const int missing = x != x;
  slots[0] = x;
  slots[1] = missing ? (KILN_THRESHOLD_T)INFINITY : x;
  slots[2] = (KILN_THRESHOLD_T)missing;
}
#endif

static inline int kiln_category_matches(uint32_t offset, KILN_THRESHOLD_T x) {
  if (!(x >= 0 && x <= KILN_MAX_CATEGORY)) return 0;
  const uint32_t category = (uint32_t)x;
  return category / 32 < kiln_category_words[offset] &&
         ((kiln_category_words[offset + 1 + category / 32] >> (category % 32)) & 1);
}

static inline int kiln_goes_right(const kiln_node* node, const kiln_value* row) {
  const uint32_t split = node->split;
#if KILN_HAS_CATEGORICAL
  if (split & KILN_SPLIT_CATEGORICAL) {
    const KILN_THRESHOLD_T x = KILN_CATEGORY_VALUE(row, split & KILN_SPLIT_SLOT);
    if (x != x) return split >> 31;
    return kiln_category_matches(node->v.offset, x) == ((split & KILN_SPLIT_MATCH_RIGHT) != 0);
  }
#endif
#if KILN_QUANTIZED
  return row[split].rank >= node->v.quantized;
#else
  return row[split] >= node->v.threshold;
#endif
}

static inline void kiln_add_leaf(const kiln_node* leaf, KILN_LEAF_T* result) {
#if KILN_LEAF_WIDTH == 1
  result[0] += leaf->v.value;
#else
  const KILN_LEAF_T* values = kiln_leaf_vectors + leaf->v.offset;
  for (int k = 0; k < KILN_LEAF_WIDTH; ++k) result[k] += values[k];
#endif
}

/* Adds every tree's leaf for `count` rows to `out` (KILN_NUM_OUTPUT values per row), tree by tree. */
static void kiln_run_trees(kiln_value* rows, int64_t count, KILN_LEAF_T* out) {
  for (int32_t group = 0; group < KILN_NUM_GROUP; ++group) {
    const int32_t* roots = kiln_roots + group * KILN_TREES_PER_GROUP;
    const int32_t* outputs = kiln_tree_output + group * KILN_TREES_PER_GROUP;
    const int32_t depth = kiln_group_depth[group];
    for (int64_t r = 0; r < count; ++r) {
      const kiln_value* row = rows + r * KILN_ROW_VALUES;
      int32_t at[KILN_TREES_PER_GROUP];
      for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) at[t] = roots[t];
      for (int32_t step = 0; step < depth; ++step) {
        for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) {
          const kiln_node* node = kiln_nodes + at[t];
          /* An indexed load: gcc compiles `? right : left` to the very branch this code avoids, and bit
             arithmetic on both children measured 17-25% slower on 10,000 rows (more instructions per step). */
          at[t] = node->child[kiln_goes_right(node, row)];
        }
      }
      KILN_LEAF_T* result = out + r * KILN_NUM_OUTPUT;
      for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) kiln_add_leaf(kiln_nodes + at[t], result + outputs[t]);
    }
  }
}
