"""Remote devices over TVM's RPC: run, bench and tune on the machine an artifact is for.

- session: where to run (one server, or a tracker's pool of servers under a key) and the sessions to them;
- server: `kiln rpc-server`, TVM's runtime RPC loop behind TVM's server protocol (needs only kiln-runtime);
- tracker: `kiln rpc-tracker`, TVM's tracker (needs the full install);
- predictor: an artifact uploaded to a server, run and timed there;
- measure: MetaSchedule candidates measured on a tracker's servers, in parallel across them.

Everything a device or `kiln run --rpc` needs goes through tvm_ffi and TVM's runtime library (which carries the
RPC client and server loop), never the `tvm` package.
"""
