"""INT8 quantization of neural graphs: options, policy, QDQ insertion, accuracy report and gate."""
