pytest_plugins = ["tests.support.cluster_fixtures"]
