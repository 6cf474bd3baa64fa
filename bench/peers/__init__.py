"""Peers measured beside Flowkeeper on the same local control plane (KEDA): not part of `make test`.

- netns: the network namespace and veth pair a run makes for an extension API server, and a relay
- keda:  KEDA's operator and metrics adapter as processes (`KedaPeer`)
- smoke: `python -m bench.peers.smoke`, one ScaledObject end to end, timed
"""
