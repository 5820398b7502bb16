"""The HTTP server: ``app`` (the one route table and its checks), ``native`` (the handlers),
``compat`` (Ollama's and OpenAI's wire formats over them), ``scheduler`` (continuous batching),
``pool`` (loaded models, keep_alive, memory budget), ``auth`` (keys, scopes, Host, rate limits),
``structured`` (JSON-schema constrained decoding). ``oficina serve`` starts it."""
