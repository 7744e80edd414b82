"""Real services for tests, started on free ports in temporary directories.

Each service object can be stopped, killed and restarted by the test, so fault tests
act on the real thing. Nothing here touches the services a machine may already run on
their standard ports.
"""
