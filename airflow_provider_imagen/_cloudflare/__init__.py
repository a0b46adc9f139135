"""
The wire: everything between validated input and Cloudflare's parsed answer, and nothing about tasks.

- :mod:`.settings`: the Airflow connection, validated, and the request built from it (route, headers, body).
- :mod:`.transport`: the HTTP transport, and httpx's errors mapped once to the provider's.
- :mod:`.clients`: one pooled async client per connection and event loop, shared by triggers.
- :mod:`.response`: every answer Cloudflare can give, parsed into a result or the provider's exception.
- :mod:`.retry`: which failures are retried, how long to wait, and when a re-send could be billed twice.
- :mod:`.pacing`: the account's rate limit, learned from refusals and shared per process.
- :mod:`.fallback`: the walk along a model chain when a model is unavailable.
- :mod:`.batch`: many calls at a bounded concurrency, each failure its own item's.
- :mod:`.verify`: the connection test (the UI's Test button).
- :mod:`.rules`: input checks shared by parse time and run time, with the words of every refusal.
"""
