"""Translations between other vendors' HTTP APIs and the native Ollama API (docs/compat.md).

Each module turns a vendor request body into a native request body (the `native` dict that
server/schemas.py parses, exactly as Ollama's middleware re-encodes the request), and the native
events a `server.job.Job` yields back into the vendor's response objects or stream frames. They
never load a model or generate: server/app.py runs the translated request on the same
generate/chat/embed path as /api. Imports: server.errors, server.events only.
"""
