"""Golden outputs for other backends: record the reference's answers, replay them elsewhere.

`record` runs a JSONL corpus of /api/generate or /api/chat requests through refllama in-process
(the server's own preflight, template and decode path) and writes a versioned golden JSONL
(format in server/golden/record.py). `compare` replays a golden against any server with
Ollama's or OpenAI's API and scores it per case (server/golden/compare.py); report.py renders
the terminal table, the JSON and the offline HTML report. command.py is the `refllama golden`
CLI; it imports the engine only when a golden command runs, so the `refllama` client verbs
stay free of it (server/cli/). Imports engine/ and server/ modules below the app.
"""
