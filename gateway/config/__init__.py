"""The config file, read and validated once: what every other part is built from.

load (GatewayConfig, load_config, ConfigError: every problem with its file:line), source (YAML,
${VAR} substitution, line numbers), fields and durations (shared field types), keyfiles, tokens
(keys, issuers, audiences, lifetimes), routes (upstreams and routes), rules (the routes compiled
into the trie the request is matched against; built here because a conflict between two routes is
a config error with both lines), auth (accounts, mail, rate limits), smtp_url, tls (the proxy
port's certificate and key, checked at load; the ssl context made from them).

May import: errors and paths; nothing else of gateway's.
"""
