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
  int32_t left, right;
} kiln_node;

#define KILN_SPLIT_FEATURE 0x1FFFFFFFu
#define KILN_SPLIT_CATEGORICAL 0x20000000u
#define KILN_SPLIT_MATCH_RIGHT 0x40000000u
#define KILN_SPLIT_DEFAULT_RIGHT 0x80000000u
#define KILN_MISSING_RANK INT32_MIN
/* The largest category treelite accepts: larger values, like negative ones, match no category. */
#define KILN_MAX_CATEGORY ((KILN_THRESHOLD_T)(1U << 24))

#include "kiln_trees.h"

#if KILN_QUANTIZED
typedef struct { KILN_THRESHOLD_T x; int32_t rank; } kiln_value;
#define KILN_VALUE(v) ((v)->x)

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

static inline void kiln_set_value(kiln_value* value, KILN_THRESHOLD_T x, int32_t feature) {
  value->x = x;
  value->rank = x != x ? KILN_MISSING_RANK : kiln_rank(x, feature);
}
#else
typedef KILN_THRESHOLD_T kiln_value;
#define KILN_VALUE(v) (*(v))

static inline void kiln_set_value(kiln_value* value, KILN_THRESHOLD_T x, int32_t feature) {
  (void)feature;
  *value = x;
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
  const kiln_value* value = row + (split & KILN_SPLIT_FEATURE);
  const int default_right = split >> 31;
#if KILN_HAS_CATEGORICAL
  if (split & KILN_SPLIT_CATEGORICAL) {
    const KILN_THRESHOLD_T x = KILN_VALUE(value);
    if (x != x) return default_right;
    return kiln_category_matches(node->v.offset, x) == ((split & KILN_SPLIT_MATCH_RIGHT) != 0);
  }
#endif
#if KILN_QUANTIZED
  return (value->rank >= node->v.quantized) | ((value->rank == KILN_MISSING_RANK) & default_right);
#else
  return (*value >= node->v.threshold) | ((*value != *value) & default_right);
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
      const kiln_value* row = rows + r * KILN_NUM_FEATURE;
      int32_t at[KILN_TREES_PER_GROUP];
      for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) at[t] = roots[t];
      for (int32_t step = 0; step < depth; ++step) {
        for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) {
          const kiln_node* node = kiln_nodes + at[t];
          at[t] = kiln_goes_right(node, row) ? node->right : node->left;
        }
      }
      KILN_LEAF_T* result = out + r * KILN_NUM_OUTPUT;
      for (int t = 0; t < KILN_TREES_PER_GROUP; ++t) kiln_add_leaf(kiln_nodes + at[t], result + outputs[t]);
    }
  }
}
