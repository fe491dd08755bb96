"""Tree ensembles (XGBoost, LightGBM, scikit-learn) read through treelite into a tree Graph.

The Graph's body is a ``treelite.Model``. Its signature has one input, ``input``: float32
[batch, num_feature] (float64 is accepted at predict time too), and one output of
[batch, num_class] in the model's leaf type, named for what it holds: ``probability`` (classifiers,
after sigmoid/softmax or tree averaging), ``margin`` (classifiers without a link function),
``prediction`` (regression, ranking) or ``score`` (IsolationForest: minus scikit-learn's
``score_samples``). A binary classifier with one margin per row has num_class 1 (the positive
class); one that averages class probabilities (random forests) has num_class 2.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.compiler.frontends.source_format import SourceFormat
from kiln.compiler.graph import Graph, Provenance, Signature, SourceFile, TensorSpec
from kiln.errors import InputError

if TYPE_CHECKING:
    import treelite

INPUT_NAME = "input"
# treelite's TaskType enum, by value
_TASKS = ("binary", "regression", "multiclass", "ranking", "isolation-forest")
_LIGHTGBM_END = b"\nend of trees"


class OutputKind(str, enum.Enum):
    PROBABILITY = "probability"
    MARGIN = "margin"
    PREDICTION = "prediction"
    SCORE = "score"


@dataclass(frozen=True)
class TreeSummary:
    task: str
    num_trees: int
    max_depth: int
    num_feature: int
    num_class: int
    output: OutputKind
    postprocessor: str
    categorical: bool
    threshold_type: str
    leaf_type: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": self.output.value}


def load(path: Path, source_format: SourceFormat, trust_pickle: bool) -> Graph:
    model = _read_treelite(path, source_format, trust_pickle)
    if model.num_tree == 0:
        raise InputError(f"{path}: the model has no trees; train it for at least one round")
    summary = summarize(model)
    num_target = int(model.get_header_accessor().get_field("num_target")[0])
    if num_target != 1:
        raise InputError(f"{path}: the model predicts {num_target} targets; kiln compiles single-target "
                         "models only, so train one model per target")
    signature = Signature(
        inputs=(TensorSpec(INPUT_NAME, ("batch", summary.num_feature), "float32"),),
        outputs=(TensorSpec(summary.output.value, ("batch", summary.num_class), summary.leaf_type),),
    )
    return Graph(model, signature, Provenance(source_format.value, (SourceFile.of(path),)))


def summarize(model: "treelite.Model") -> TreeSummary:
    header = model.get_header_accessor()
    task = _TASKS[int(header.get_field("task_type")[0])]
    postprocessor = str(header.get_field("postprocessor"))
    depths = model.get_tree_depth()
    categorical = any(model.get_tree_accessor(i).get_field("has_categorical_split")[0] for i in range(model.num_tree))
    return TreeSummary(
        task=task,
        num_trees=model.num_tree,
        max_depth=int(depths.max()),
        num_feature=model.num_feature,
        num_class=int(max(header.get_field("num_class"))),
        output=_output_kind(task, postprocessor, bool(header.get_field("average_tree_output")[0])),
        postprocessor=postprocessor,
        categorical=bool(categorical),
        threshold_type=model.input_type,
        leaf_type=model.output_type,
    )


def _output_kind(task: str, postprocessor: str, averaged: bool) -> OutputKind:
    if task == "isolation-forest":
        return OutputKind.SCORE
    if task in ("binary", "multiclass"):
        raw = postprocessor in ("identity", "identity_multiclass") and not averaged
        return OutputKind.MARGIN if raw else OutputKind.PROBABILITY
    return OutputKind.PREDICTION


def _read_treelite(path: Path, source_format: SourceFormat, trust_pickle: bool) -> "treelite.Model":
    import treelite

    from kiln.compiler.frontends.trees.native import load_native
    from kiln.compiler.frontends.trees.validate import check_file, malformed
    from kiln.compiler.frontends.trees.validate_native import check_native

    readers = {
        SourceFormat.XGBOOST_JSON: lambda: treelite.frontend.load_xgboost_model(path, format_choice="json"),
        SourceFormat.XGBOOST_UBJSON: lambda: treelite.frontend.load_xgboost_model(path, format_choice="ubjson"),
        SourceFormat.XGBOOST_BINARY: lambda: treelite.frontend.load_xgboost_model_legacy_binary(path),
        SourceFormat.LIGHTGBM: lambda: treelite.frontend.load_lightgbm_model(path),
    }
    if source_format in readers:
        data = path.read_bytes()
        if source_format is SourceFormat.LIGHTGBM and _LIGHTGBM_END not in data:
            # treelite reads the trees it finds, so a truncated file would load as a smaller model
            raise InputError(f"{path}: the LightGBM model is truncated (no \"end of trees\" line); save it again")
        # treelite reads indices unchecked: a corrupt tree crashes it or exhausts memory instead of failing
        check_file(path, source_format, data)
        try:
            return readers[source_format]()
        except treelite.TreeliteError as exc:
            raise malformed(path, source_format, _first_line(exc)) from exc
        except UnicodeDecodeError:  # treelite's error message quotes the file's bytes, which are not UTF-8
            raise malformed(path, source_format, "it holds bytes that are not UTF-8 text") from None
    model = load_native(path, source_format, trust_pickle)
    check_native(path, model)
    return _from_native(path, model)


def _from_native(path: Path, model: Any) -> "treelite.Model":
    import treelite

    module = type(model).__module__.split(".")[0]
    try:
        if module == "xgboost":
            return treelite.frontend.from_xgboost(model.get_booster() if hasattr(model, "get_booster") else model)
        if module == "lightgbm":
            return treelite.frontend.from_lightgbm(getattr(model, "booster_", model))
        if module == "sklearn":
            return treelite.sklearn.import_model(_with_fitted_count(model))
    # treelite's importers read the estimator's arrays as they find them: one of a wrong type or shape (a corrupt
    # skops file) fails inside them with whatever numpy or an assert raises
    except (treelite.TreeliteError, NotImplementedError, AttributeError, AssertionError, IndexError, KeyError,
            TypeError, ValueError) as exc:
        raise InputError(f"{path}: treelite cannot import this {type(model).__name__} ({_first_line(exc)})") from exc
    raise InputError(f"{path} holds a {type(model).__module__}.{type(model).__name__}; kiln compiles scikit-learn "
                     "RandomForest/ExtraTrees/GradientBoosting/HistGradientBoosting/IsolationForest, XGBoost and "
                     "LightGBM models")


def _with_fitted_count(model: Any) -> Any:
    """`model`, or a shallow copy whose n_estimators is the trees it holds: treelite reads n_estimators trees
    from a GradientBoosting model, which holds n_estimators_ of them when it stopped early (n_iter_no_change)."""
    fitted = getattr(model, "n_estimators_", None)
    if fitted is None or fitted == getattr(model, "n_estimators", fitted):
        return model
    trimmed = copy.copy(model)
    trimmed.n_estimators = fitted
    return trimmed


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
