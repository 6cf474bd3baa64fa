pytest_plugins = ["tests.support.cluster_fixtures", "tests.support.prometheus_fixtures"]
