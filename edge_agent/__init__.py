"""Edge agent: on-device streaming speech recognition that escalates hard utterances to the cloud."""

__version__ = "0.1.0"
