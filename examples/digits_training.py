"""Shared code of the digits example training scripts.

examples/digits_cnn/train.py and examples/digits_transformer/make_digits_transformer.py each
train a small torch model on scikit-learn's bundled digits data (the same split, scaling and
calibration images; only the shape of one sample differs) and write the same kinds of files next
to themselves. This module holds what they share: seeding, loading the data, the training loop,
the ONNX export (TorchScript exporter, weights inline, producer name) and its checks, the
comparison of torch with onnxruntime, and writing digits_test.npz, digits_calib.npz and
metrics.json. Each script keeps its model, its hyperparameters and its accuracy threshold.

The scripts are run as files (python examples/digits_cnn/train.py), not as modules: each puts
this folder on sys.path to import this file.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OPSET = 17


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread plus deterministic kernels: the run gives the same weights
    # whatever the number of cores of the machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


class Split(NamedTuple):
    x_train: np.ndarray  # float32 [N, *sample_shape]
    x_test: np.ndarray
    y_train: np.ndarray  # int64 [N]
    y_test: np.ndarray


def load_data(sample_shape: tuple[int, ...]) -> Split:
    """The digits scaled to [0, 1], each shaped `sample_shape`, split 75/25 (stratified).

    Prints the shapes of the training and test images.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, *sample_shape)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    print(f"train {x_train.shape}, test {x_test.shape}", flush=True)
    return Split(x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64))


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    print_every: int,
) -> None:
    """Cross-entropy training on `data`'s training images with `opt` and a cosine schedule.

    Batches are drawn in an order fixed by `seed`; the mean loss is printed every
    `print_every` epochs and after the last one.
    """
    xt = torch.from_numpy(data.x_train)
    yt = torch.from_numpy(data.y_train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = xt.shape[0]
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        if (epoch + 1) % print_every == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / n:.4f}", flush=True)


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    sample_shape: tuple[int, ...],
    producer_name: str,
    disable_mha_fastpath: bool = False,
) -> None:
    """Write `model` to `path`: input "input" [batch, *sample_shape], output "logits"."""
    import onnx

    model.eval()
    dummy = torch.zeros(1, *sample_shape, dtype=torch.float32)
    # The legacy TorchScript exporter (dynamo=False) writes opset 17 directly;
    # in eval mode with constant folding it folds each BatchNorm into the
    # preceding Conv. The dynamo exporter (the default in this torch) would
    # need onnxscript, a version conversion to 17, and defaults to
    # external_data=True.
    if disable_mha_fastpath:
        # The MHA fast path (a fused native op in eval mode) has no ONNX export:
        # turn it off so attention is written as MatMul/Softmax.
        torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings():
        # Python shows a DeprecationWarning by default only where __main__ triggers it: keep
        # printing the exporter's (expected) one now that this module, not the script, calls it.
        warnings.filterwarnings("default", category=DeprecationWarning, module=__name__)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            export_params=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
    # Make sure every weight is inline in the .onnx file (no external data).
    m = onnx.load(str(path), load_external_data=True)
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} stored as external data")
    m.producer_name = producer_name
    onnx.save_model(m, str(path), save_as_external_data=False)
    stray = path.with_name(path.name + ".data")
    if stray.exists():
        stray.unlink()


def check_onnx(path: Path, sample_shape: tuple[int, ...]) -> dict:
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    inp = m.graph.input[0]
    out = m.graph.output[0]
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert inp.name == "input" and in_dims == ["batch", *sample_shape], (inp.name, in_dims)
    assert out.name == "logits" and out_dims == ["batch", 10], (out.name, out_dims)
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    assert opset.get("ai.onnx") == OPSET, opset
    ops = sorted({n.op_type for n in m.graph.node})
    return {"op_types": ops, "opset": OPSET, "input_shape": in_dims, "output_shape": out_dims}


def evaluate_export_and_write(
    model: nn.Module,
    onnx_path: Path,
    data: Split,
    *,
    sample_shape: tuple[int, ...],
    producer_name: str,
    n_calib: int,
    seed: int,
    epochs: int,
    extra_metrics: dict | None = None,
    disable_mha_fastpath: bool = False,
    check_batch_of_one_logits: bool = False,
) -> float:
    """Test the trained model, export it to `onnx_path` and check onnxruntime agrees with torch.

    Writes digits_test.npz, digits_calib.npz (the first `n_calib` training images) and
    metrics.json next to `onnx_path`; `extra_metrics` go into metrics.json after
    num_calib_samples. With `check_batch_of_one_logits`, the logits of a batch of one must
    match those of the full batch. Returns the torch top-1 accuracy.
    """
    model.eval()
    out_dir = onnx_path.parent
    x_train, x_test, y_train, y_test = data

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_pred = torch_logits.argmax(1)
    torch_acc = float((torch_pred == y_test).mean())
    print(f"torch top-1 accuracy: {torch_acc:.4f}", flush=True)

    export_onnx(
        model,
        onnx_path,
        sample_shape=sample_shape,
        producer_name=producer_name,
        disable_mha_fastpath=disable_mha_fastpath,
    )
    info = check_onnx(onnx_path, sample_shape)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"input": x_test})
    ort_pred = ort_logits.argmax(1)
    ort_acc = float((ort_pred == y_test).mean())
    max_abs_diff = float(np.abs(ort_logits - torch_logits).max())
    agree = int((ort_pred == torch_pred).sum())
    print(f"onnxruntime top-1 accuracy: {ort_acc:.4f}", flush=True)
    print(f"max |logit diff| torch vs ort: {max_abs_diff:.3e}", flush=True)
    if agree != len(y_test) or ort_acc != torch_acc:
        raise RuntimeError(
            f"torch and onnxruntime disagree on {len(y_test) - agree} samples"
        )
    if max_abs_diff > 1e-3:
        raise RuntimeError(f"logits differ by {max_abs_diff}")

    # Also run a batch of a different size, to exercise the symbolic dim.
    (one,) = sess.run(["logits"], {"input": x_test[:1]})
    assert one.shape == (1, 10)
    if check_batch_of_one_logits:
        assert np.abs(one - ort_logits[:1]).max() <= 1e-4

    np.savez(out_dir / "digits_test.npz", input=x_test, labels=y_test)
    np.savez(out_dir / "digits_calib.npz", input=x_train[:n_calib].copy())

    import onnx

    metrics = {
        "model": onnx_path.name,
        "torch_top1_accuracy": torch_acc,
        "onnxruntime_top1_accuracy": ort_acc,
        "torch_ort_prediction_agreement": agree,
        "torch_ort_max_abs_logit_diff": max_abs_diff,
        "num_test_samples": int(len(y_test)),
        "num_train_samples": int(len(y_train)),
        "num_calib_samples": n_calib,
        **(extra_metrics or {}),
        "seed": seed,
        "epochs": epochs,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": info["opset"],
        "op_types": info["op_types"],
        "onnx_file_bytes": onnx_path.stat().st_size,
    }
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))
    return torch_acc
