pytest_plugins = ["tests.support.cluster_fixtures", "tests.support.prometheus_fixtures", "tests.support.kube_state_metrics_fixtures",
                  "tests.support.rabbitmq_fixtures", "tests.support.worker_groups"]
