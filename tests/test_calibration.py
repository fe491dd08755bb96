"""Calibration: data sources and their errors, observers, bounded memory, and the range cache."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from kiln.calibration.collect import collect_ranges
from kiln.calibration.datasets import CalibData, Sampling, open_dataset
from kiln.calibration.observers import CalibMethod, HistogramObserver, MinMaxObserver, ObserverSettings
from kiln.compiler.graph import TensorSpec
from kiln.errors import InputError, SettingError
from kiln.settings import as_flags
from kiln.testing.paths import DIGITS_CALIB as CALIB
from kiln.testing.paths import DIGITS_CNN
SPEC = (TensorSpec("input", ("batch", 1, 8, 8), "float32"),)


def _rows(dataset) -> np.ndarray:
    return np.concatenate([b["input"] for b in dataset.batches(7)])


def test_npz_folder_is_read_in_name_order_and_sampled_with_a_seed(tmp_path):
    data = np.load(CALIB)["input"]
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "b.npy", data[100:])
    np.save(folder / "a.npy", data[:100])
    assert np.array_equal(_rows(open_dataset(CalibData(folder), SPEC)), data)
    first = _rows(open_dataset(CalibData(folder, Sampling(samples=50, seed=1)), SPEC))
    assert len(first) == 50
    assert np.array_equal(first, _rows(open_dataset(CalibData(folder, Sampling(samples=50, seed=1)), SPEC)))
    assert not np.array_equal(first, _rows(open_dataset(CalibData(folder, Sampling(samples=50, seed=2)), SPEC)))


def test_csv_with_header_feeds_a_tabular_input(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n")
    dataset = open_dataset(CalibData(path), (TensorSpec("x", ("n", 3), "float32"),))
    (batch,) = dataset.batches(10)
    assert batch["x"].dtype == np.float32 and batch["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_images_are_preprocessed_as_the_toml_spec_says(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    from kiln.calibration.images import ImageSpec

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = np.full((12, 10, 3), (i * 50, 100, 200), np.uint8)
        image_module.fromarray(pixels).save(folder / f"{i}.png")
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text('resize = 8\ncrop = 8\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n'
                         'layout = "NCHW"\nchannels = "BGR"\n')
    spec = ImageSpec.from_toml(spec_path)
    dataset = open_dataset(CalibData(folder, Sampling(images=spec)), (TensorSpec("img", ("n", 3, 8, 8), "float32"),))
    (batch,) = dataset.batches(8)
    assert batch["img"].shape == (3, 3, 8, 8)
    np.testing.assert_allclose(batch["img"][1, :, 0, 0], [(200 / 255 - .5) / .5, (100 / 255 - .5) / .5,
                                                          (50 / 255 - .5) / .5], atol=1e-2)  # BGR order


def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, message", [
    ("name", "missing input; unknown pixels"),
    ("shape", "shape 10x1x4x4, the model takes Nx1x8x8"),
    ("dtype", "dtype float64, the model takes float32; convert with .astype(np.float32)"),
    ("empty", "is empty"),
    ("nan", "2 samples hold NaN or inf (first at row 3)"),
    ("fewer", "--calib-samples 500 asks for more samples than"),
])
def test_bad_calibration_data_is_a_clear_error(tmp_path, case, message):
    good = np.zeros((10, 1, 8, 8), np.float32)
    data = CalibData(_write(tmp_path, "d.npz", input=good))
    if case == "name":
        data = CalibData(_write(tmp_path, "d.npz", pixels=good))
    elif case == "shape":
        data = CalibData(_write(tmp_path, "d.npz", input=np.zeros((10, 1, 4, 4), np.float32)))
    elif case == "dtype":
        data = CalibData(_write(tmp_path, "d.npz", input=good.astype(np.float64)))
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        data = CalibData(tmp_path / "empty")
    elif case == "nan":
        bad = good.copy()
        bad[3, 0, 0, 0], bad[5, 0, 1, 1] = np.nan, np.inf
        data = CalibData(_write(tmp_path, "d.npz", input=bad))
    elif case == "fewer":
        data = CalibData(data.path, Sampling(samples=500))
    with pytest.raises(InputError) as error:
        open_dataset(data, SPEC)
    # a setting's error names the field in Python (samples); the CLI shows its flag (--calib-samples)
    assert message in (as_flags(error.value) if isinstance(error.value, SettingError) else str(error.value))


def test_clipping_observers_ignore_rare_outliers_that_minmax_follows():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(200_000).astype(np.float32)
    values[:5] = 1000.0
    minmax = MinMaxObserver()
    minmax.update(values)
    assert minmax.result().hi == 1000.0
    for method in (CalibMethod.PERCENTILE, CalibMethod.ENTROPY):
        observer = HistogramObserver(minmax.result(), ObserverSettings(method, percentile=99.99))
        for chunk in np.array_split(values, 7):
            observer.update(chunk)
        bounds = observer.result()
        # Entropy's smallest threshold is 128 of the 2048 bins (amax / 16), as in TensorRT.
        limit = 1000.0 / 16 if method is CalibMethod.ENTROPY else 20.0
        assert 2.0 < bounds.hi <= limit, (method, bounds)
        assert -limit <= bounds.lo < -2.0, (method, bounds)


def test_mse_clips_a_heavy_tail_where_that_lowers_the_squared_error():
    values = np.random.default_rng(0).laplace(size=200_000).astype(np.float32)
    minmax = MinMaxObserver()
    minmax.update(values)
    observer = HistogramObserver(minmax.result(), ObserverSettings(CalibMethod.MSE))
    observer.update(values)
    amax = max(-minmax.result().lo, minmax.result().hi)
    assert 3.0 < observer.result().hi < 0.8 * amax


def test_histograms_stream_in_bounded_memory_over_10000_samples():
    """10,000 samples of the digits CNN: about 45 MB of float activations in all; kiln holds one batch."""
    import onnx

    from kiln.calibration.datasets import ArrayDataset

    model = onnx.shape_inference.infer_shapes(onnx.load(str(DIGITS_CNN)))
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (10_000, 1, 8, 8)).astype(np.float32)
    dataset = ArrayDataset({"input": data}, "")
    per_sample = 4 * (64 + 2 * 16 * 64 + 2 * 32 * 64 + 32 * 16 + 2 * 32 * 16 + 32 + 32 + 10)  # float tensors
    all_activations = per_sample * len(data)
    tracemalloc.start()
    ranges = collect_ranges(model, dataset, ObserverSettings(CalibMethod.ENTROPY))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all_activations > 40e6
    # One batch of 32 activations (~0.1 MB) plus a 16 KiB histogram per tensor, and ORT's own buffers.
    assert peak < 8e6, peak
    assert ranges["logits"].lo < 0 < ranges["logits"].hi


def _quantize_json(cli_runner, tmp_path, *extra):
    from kiln.cli import cli

    result = cli_runner.invoke(cli, ["quantize", str(DIGITS_CNN), "-o", str(tmp_path / "q.onnx"), "--json",
                                     "--cache-dir", str(tmp_path / "cache"), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["quantization"]["calibration"]


def test_second_run_reads_the_cache_and_changes_invalidate_it(tmp_path, cli_runner):
    calib = _write(tmp_path, "calib.npz", input=np.load(CALIB)["input"])
    first = _quantize_json(cli_runner, tmp_path, "--calib", str(calib))
    assert first["cached"] is False
    again = _quantize_json(cli_runner, tmp_path, "--calib", str(calib))
    assert again["cached"] is True and again["cache_file"] == first["cache_file"]
    assert json.loads(open(first["cache_file"]).read())["ranges"]["logits"]
    assert _quantize_json(cli_runner, tmp_path, "--calib", str(calib), "--calib-method", "minmax")["cached"] is False
    assert _quantize_json(cli_runner, tmp_path, "--calib", str(calib), "--calib-samples", "150")["cached"] is False
    _write(tmp_path, "calib.npz", input=np.load(CALIB)["input"][::-1].copy())
    assert _quantize_json(cli_runner, tmp_path, "--calib", str(calib))["cached"] is False
