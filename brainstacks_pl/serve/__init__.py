"""``brainstacks serve``: an OpenAI-compatible HTTP server over a run, each request routed to its own stacks.

    engine.py   continuous batching: one decode step for every request in flight, per-row routing weights
    jobs.py     a request's route, sampling and state; the events the engine sends back
    kv.py       the shared, left-padded KV cache that rows join and leave
    schema.py   request validation (OpenAI's fields, OpenAI's error shape) and model names -> routes
    text.py     incremental detokenisation with stop strings
    reply.py    a response's ``n`` choices in OpenAI's shape: full, stream chunks, usage
    metrics.py  GET /metrics (Prometheus text format), one registry per app
    app.py      the Starlette routes: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics
    server.py   ``brainstacks serve``: uvicorn, bounded resources, graceful SIGTERM

Needs the ``serve`` extra (``pip install -e ".[serve]"``); nothing here is imported by ``brainstacks --help``.
"""
