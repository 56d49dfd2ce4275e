"""Tools that are not on the request path: the bench, the load test, FLOP counting and a local test server."""
