pytest_plugins = ["tests.fixtures_model", "tests.fixtures_queryapp"]
