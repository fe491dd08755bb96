"""A serverless-style handler: the artifact is loaded once per process, each event is one prediction.

Needs only the runtime-only install (`pip install kiln_runtime-*.whl`: numpy, apache-tvm-ffi, click).
The handler's signature is AWS Lambda's (`handler(event, context)`); an event holds the inputs by name as
nested lists, the reply holds the outputs the same way:

    {"inputs": {"input": [[[[0.0, ...]]]]}}  ->  {"outputs": {"logits": [[...]]}}

Locally, `KILN_ARTIFACT=model.kiln python handler.py event.json` prints the reply for one event file, and
`python handler.py --serve 8080` answers POSTed events over HTTP (what the Dockerfile runs).
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

import kiln
from kiln.errors import KilnError

PREDICTOR = kiln.load(os.environ.get("KILN_ARTIFACT", "model.kiln"))
DTYPES = {spec.name: spec.dtype for spec in PREDICTOR.inputs}


def handler(event: dict, context: object = None) -> dict:
    try:
        feed = {name: np.asarray(value, dtype=DTYPES.get(name)) for name, value in event["inputs"].items()}
        outputs = PREDICTOR.run(feed)
    except (KeyError, TypeError, ValueError, KilnError) as exc:
        return {"error": str(exc)}
    return {"outputs": {name: array.tolist() for name, array in outputs.items()}}


class _Events(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        reply = json.dumps(handler(event)).encode()
        self.send_response(400 if "error" in json.loads(reply) else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        HTTPServer(("0.0.0.0", int(sys.argv[2])), _Events).serve_forever()
    else:
        print(json.dumps(handler(json.loads(open(sys.argv[1]).read()))))
