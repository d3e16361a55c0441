"""The admin port: health and readiness, Prometheus metrics, the revocation API.

routes (the admin application). May import: pipeline, auth (revocation), steps, store, config,
errors and the top-level modules; never server, cli or dev.
"""
