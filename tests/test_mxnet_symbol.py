"""The symbol JSON reader and converter: attribute spellings of every MXNet 1.x era, references
checked, and mutated files that must fail with a clear error, never a crash or a hang."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kiln.compiler.frontends.mxnet.convert import load
from kiln.compiler.frontends.mxnet.symbol import read_symbol
from kiln.errors import InputError, KilnError, SettingError
from kiln.settings import as_flags
from kiln.testing.paths import MXNET_DIGITS as DIGITS
SYMBOL, PARAMS = DIGITS / "digits-symbol.json", DIGITS / "digits-0000.params"
SHAPES = {"data": (1, 1, 8, 8)}


def _ops(symbol: Path) -> list[str]:
    return [node.op_type for node in load(symbol, PARAMS, SHAPES).body.graph.node]


@pytest.mark.parametrize("key", ["attr", "param"])
def test_older_attribute_spellings_and_two_item_entries_convert_alike(key, tmp_path):
    document = json.loads(SYMBOL.read_text())
    for node in document["nodes"]:
        if "attrs" in node:
            node[key] = node.pop("attrs")
        node["inputs"] = [entry[:2] for entry in node["inputs"]]
    old = tmp_path / "old-symbol.json"
    old.write_text(json.dumps(document))
    assert _ops(old) == _ops(SYMBOL)


def test_a_parameter_missing_from_the_params_file_is_named(tmp_path):
    text = SYMBOL.read_text().replace('"conv0_weight"', '"renamed_weight"')
    renamed = tmp_path / "renamed-symbol.json"
    renamed.write_text(text)
    with pytest.raises(SettingError) as error:
        load(renamed, PARAMS, SHAPES)
    assert "renamed_weight, found neither in the params file nor in --input-shape" in as_flags(error.value)


@pytest.mark.parametrize("text, message", [
    ('{"nodes": [{"op": "null", "name": "x"}], "heads": [[5, 0, 0]]}', "does not come before it"),
    ('{"nodes": [{"op": "null", "name": "x"}, {"op": "relu", "name": "r", "inputs": [[1, 0, 0]]}], '
     '"heads": [[1, 0, 0]]}', "does not come before it"),
    ('{"nodes": [{"op": "null", "name": "x"}], "heads": [[0, -1, 0]]}', "does not come before it"),
    ('{"nodes": [], "heads": []}', '"nodes" is empty'),
    ('{"nodes": [{"op": "null", "name": "x"}]}', 'no "heads"'),
    ('{"nodes": [{"op": "null", "name": "x", "attrs": {"a": 1}}], "heads": [[0, 0]]}', "map of strings"),
    ('{"nodes": [{"op": "null", "name": "x"}], "heads": [[0, 1e400, 0]]}', "is not \\[node, output, version\\]"),
    ('{"nodes": ' + "[" * 100000 + "]" * 100000 + "}", "not valid JSON"),
    ('{"nodes": [{"op": "null", "name": "x"}', "not valid JSON"),
])
def test_malformed_symbols_are_clear_errors(text, message, tmp_path):
    path = tmp_path / "bad-symbol.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_symbol(path)


def test_absurd_attribute_values_are_input_errors(tmp_path):
    for key, value in [("kernel", "(" * 5000), ("kernel", "(0, 0)"), ("stride", "(9**99,)"),
                       ("pad", "(1, 2, 3, 4, 5)"), ("num_group", "1e9")]:
        document = json.loads(SYMBOL.read_text())
        conv = next(node for node in document["nodes"] if node["op"] == "Convolution")
        conv["attrs"][key] = value
        path = tmp_path / "bad-symbol.json"
        path.write_text(json.dumps(document))
        with pytest.raises(KilnError):
            load(path, PARAMS, SHAPES)
            pytest.fail(f"{key}={value} was accepted")


def _mutants(text: str):
    for end in range(0, len(text), 3):
        yield f"truncated at {end}", text[:end]
    for offset in range(0, len(text), 11):  # a different character: digits grow, quotes break, names change
        replacement = {"0": "9", "1": "7", '"': "x", "(": "[", ",": " "}.get(text[offset], "0")
        yield f"char {offset} replaced", text[:offset] + replacement + text[offset + 1:]


def test_mutated_symbols_never_crash_or_hang(tmp_path):
    started = time.monotonic()
    mutant = tmp_path / "mutant-symbol.json"
    for what, text in _mutants(SYMBOL.read_text()):
        mutant.write_text(text)
        try:
            load(mutant, PARAMS, SHAPES)
        except KilnError:
            pass
        except Exception as exc:
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    assert time.monotonic() - started < 240
