"""The `refllama` command, an Ollama-shaped CLI (console script `server.cli.main:main`).

main.py parses arguments and holds `serve`, `run`, `ps`, `stop`; models.py the model verbs
(`create`, `pull`, `push`, `list`, `show`, `cp`, `rm`); interactive.py the `run` session;
client.py the HTTP client and OLLAMA_HOST. Imports point down that list (main -> models,
interactive -> client) and client verbs never import the engine: only `serve` (server.app) and
`create` (server.modelfile) do, at the point they run.
"""
