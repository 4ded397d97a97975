"""Load tests of the effx-serve HTTP API with locust: scenarios, the locustfile, the runner and the report.

`effx-serve loadtest` drives it; `locust -f loadtest/locustfile.py` runs the same users by hand, alone or
in locust's master/worker mode across machines (docs/loadtest.md).

May import: effx_serve.core and effx_serve.hardware (nothing of serving, training or search: it talks to a
server over HTTP only). Only the locustfile imports locust (and so gevent).
"""
