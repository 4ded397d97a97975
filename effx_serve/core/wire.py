"""Names of the HTTP API that the server and its clients (the load tester) must spell alike."""

DEADLINE_HEADER = "effx-deadline"  # a client's absolute deadline, Unix time in seconds (docs/serving.md)
