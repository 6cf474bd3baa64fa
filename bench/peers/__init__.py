"""Peers measured beside Flowkeeper on the same local control plane (KEDA): not part of `make test`.

- keda:    KEDA's operator and metrics adapter as processes (`KedaPeer`), the ScaledObject manifest
- smoke:   `python -m bench.peers.smoke`, one ScaledObject end to end, timed
- run:     `make bench-peers` (`python -m bench.peers.run`), Flowkeeper and KEDA side by side at N flows
- watch:   Deployments' spec.replicas changes, timed from one `kubectl get --watch`
- figures: percentiles, per-minute rates, /metrics counters, ratios (pure)
- chart:   docs/bench.png and the README table from bench/peers.json
"""
