"""Serving: processes, ports and the HTTP layer around the gateway's request path.

serve (one process: the ports, SIGTERM drain, SIGHUP), supervisor (``workers: N``: the worker
processes, their restarts, reloads handed to one worker at a time), app (the aiohttp applications
of the proxy and auth endpoints), edge (the front door: request heads, timeouts, Connection: close
while draining), answers (the error tree -> HTTP answers), reload (reading the config off the loop
and applying it), tls (the proxy port's TLS context, its certificate reloaded on SIGHUP).

May import everything below it: auth, admin, pipeline, forward, steps, store, config, errors; never
cli or dev.
"""
