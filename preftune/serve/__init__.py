"""``preftune serve``: an OpenAI-compatible server over a local model, and ``preftune chat``: a terminal chat."""
