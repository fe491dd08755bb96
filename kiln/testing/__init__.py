"""Helpers shared by kiln's tests and benchmarks (as `tvm.testing` or `numpy.testing` are for theirs).

    paths.py        the example models and data in a source checkout, and the tests' cache folder
    onnx_graphs.py  GraphBuilder: the one way tests write ONNX graphs by hand
    models.py       models made with it: ResNet-18, MobileNetV2, small CNNs, quantization test models
    reference.py    compile with kiln, run ONNX Runtime, check_correctness (kiln against ONNX Runtime)
    aarch64.py      run aarch64 artifacts under qemu-user
    conformance.py  ONNX's node conformance suite: write it out, run a case in a long-lived worker, classify
    fuzz.py         the seeded mutation fuzzer over every reader (mutations in fuzz_mutations.py)

kiln's compiler and runtime never import this package; its modules import onnx, ONNX Runtime and
kiln's compiler inside the functions that use them.
"""
