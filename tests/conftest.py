pytest_plugins = ["tests.fixtures_retrieval"]
