"""Messages in, a prompt out, and generated text back into calls: Ollama's Go templates
(`gotemplate`, `goexec`, `govalues`), GGUF Jinja templates (`templates`), tool calls (`tools`)
and thinking (`thinking`). Imports `engine.errors` only.
"""
