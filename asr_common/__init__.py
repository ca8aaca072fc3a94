"""Code both services use: the generated gRPC stubs (``asr_common.protos``), logging set-up and process
helpers. It depends only on the core requirements, so an edge-only or a cloud-only install has it."""
