"""The engine in a process of its own, behind the same `Engine` protocol.

The web server and a local engine in one process share the interpreter lock: every SSE chunk,
request parse and audit row the server handles is time the engine's step loop waits for, and
the other way round. On a GPU, where the engine is fast enough that its Python is the limit,
`/v1` at 32 streams got fewer tokens/s with the engine in the server's process than in its
own (one H100 run: bench/results/serve-gpu-llama-process-h100.json). Here the engine runs in a
child process (`child`) and the server talks to it through one socket
(`proxy.EngineProcess`, messages in `wire`): each side has its own interpreter lock and core.
"""
