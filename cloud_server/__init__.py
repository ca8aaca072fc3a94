"""Cloud recognizer: Whisper (faster-whisper) over gRPC and an OpenAI-compatible REST API."""

__version__ = "0.1.0"
