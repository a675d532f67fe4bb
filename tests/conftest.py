pytest_plugins = ["tests.fixtures_model"]
