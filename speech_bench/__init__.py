"""speech-bench: WER, latency and offload of the edge-cloud system, four modes side by side."""
