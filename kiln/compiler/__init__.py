"""From model files to artifacts: graph, frontends, passes, backends, artifact."""
