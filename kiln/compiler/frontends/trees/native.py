"""Native tree models: reading pickles and skops files safely, and the native predict calls.

Pickle and joblib files run code while they load, so they are read only when the caller trusts
them. skops files are read without running code; the types kiln trusts in them beyond skops'
defaults are the tree structures of the estimators that treelite imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from kiln.compiler.frontends.source_format import SourceFormat
from kiln.compiler.manifest import Manifest
from kiln.errors import InputError, SettingError

# Types that skops does not trust by default but that the supported estimators are made of:
# plain data (tree node arrays) and references to functions, none of which runs at load time.
SKOPS_TREE_TYPES = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "functools.partial",
    "sklearn.utils.validation.check_array",
})

NativePredict = Callable[[np.ndarray], np.ndarray]


def load_native(path: Path, source_format: SourceFormat, trust_pickle: bool) -> Any:
    """The model object stored in a pickle/joblib or skops file."""
    if source_format is SourceFormat.SKLEARN_PICKLE:
        return _load_pickle(path, trust_pickle)
    if source_format is SourceFormat.SKOPS:
        return _load_skops(path, trust_pickle)
    if source_format is SourceFormat.LIGHTGBM:
        import lightgbm

        return lightgbm.Booster(model_file=str(path))
    if source_format is SourceFormat.XGBOOST_BINARY:
        raise InputError(f"{path}: XGBoost 2.1+ no longer reads its legacy binary format, so there is no native "
                         "model to compare with; convert the model to JSON with an older XGBoost")
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(path.read_bytes()))
    return booster


def _load_pickle(path: Path, trust_pickle: bool) -> Any:
    from kiln.compiler.frontends.options import ImportOptions  # not at import: native predict serves runtime-only installs

    if not trust_pickle:
        raise SettingError(ImportOptions, f"{path} is a pickle/joblib file, and loading one runs whatever code it "
                                          "contains. Pass {trust_pickle} only if you trust its origin, or save the "
                                          "model with skops (skops.io.dump) and compile that instead")
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # a pickle can fail in any way its code chooses
        raise InputError(f"{path}: cannot unpickle the model ({type(exc).__name__}: {exc}); it may be truncated, "
                         "or need a library version this environment lacks") from exc


def _load_skops(path: Path, trust_pickle: bool) -> Any:
    import skops.io

    from kiln.compiler.frontends.options import ImportOptions

    try:
        untrusted = [name for name in skops.io.get_untrusted_types(file=path) if name not in SKOPS_TREE_TYPES]
        if untrusted and not trust_pickle:
            raise SettingError(ImportOptions, f"{path}: the skops file contains types kiln does not trust: "
                                              f"{', '.join(untrusted)}. Pass {{trust_pickle}} to load them if you "
                                              "trust the file's origin")
        trusted = sorted(SKOPS_TREE_TYPES) + untrusted
        return skops.io.load(path, trusted=trusted)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read the skops file ({type(exc).__name__}: {exc}); "
                         "it may be truncated or corrupt") from exc


def native_predict(model: Any, threads: int, num_output: int) -> NativePredict:
    """The library's own fastest predict call for `model`, returning rows x `num_output` like kiln's artifact."""
    module = type(model).__module__.split(".")[0]
    if module == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.set_param({"nthread": threads})
        return lambda rows: booster.inplace_predict(rows).reshape(len(rows), num_output)
    if module == "lightgbm":
        booster = getattr(model, "booster_", model)
        return lambda rows: booster.predict(rows, num_threads=threads).reshape(len(rows), num_output)
    return _sklearn_predict(model, threads, num_output)


def _sklearn_predict(model: Any, threads: int, num_output: int) -> NativePredict:
    if hasattr(model, "n_jobs"):
        model.n_jobs = threads
    if hasattr(model, "score_samples"):  # IsolationForest: treelite computes -score_samples
        return lambda rows: -model.score_samples(rows).reshape(len(rows), 1)
    if hasattr(model, "predict_proba"):
        # a binary model with one output column gives the positive class's probability
        first = 1 if num_output == 1 else 0
        return lambda rows: model.predict_proba(rows)[:, first:]
    return lambda rows: model.predict(rows).reshape(len(rows), num_output)


def native_runner(model_file: Path, manifest: Manifest, threads: int) -> Callable:
    """A bench runner (feed -> [output]) calling the native library on a tree artifact's copy of its model.

    The copy is trusted: its sha256 matches the manifest, written when the user compiled (and, for a
    pickle, trusted) the same file.
    """
    model = load_native(model_file, SourceFormat(manifest.source.source_format), trust_pickle=True)
    predict = native_predict(model, threads, int(manifest.outputs[0].shape[1]))
    name = manifest.inputs[0].name
    return lambda feed: [predict(feed[name])]
