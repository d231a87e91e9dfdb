"""Real agents built with each framework, run in their own virtualenvs (.servers/fw-NAME) by the
integration tests: tests/frameworks/NAME/{requirements.txt, agent.py}; common.py holds what the tests share."""
