pytest_plugins = [
    "tests.fixtures_model",
    "tests.fixtures_retrieval",
    "tests.fixtures_packaging",
    "tests.fixtures_queryapp",
    "tests.fixtures_fused",
    "tests.fixtures_station",
    "tests.fixtures_hardening",
]
