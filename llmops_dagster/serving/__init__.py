"""``llmops serve``: one environment's champion as a long-lived HTTP endpoint.

- ``models``: loads the champion, follows its alias and swaps a new version in once it is warm;
- ``batching``: embeds the texts of concurrent requests together;
- ``inference_log``: one row per request, written in batches off the request path;
- ``protocol``: the MLflow scoring and OpenAI chat payloads, and what is wrong with a bad one;
- ``app``: the FastAPI application; ``server``: settings, checks and uvicorn;
- ``client``: how the CLI finds and calls a running server.
"""
