//go:build tools

// Package tools pins the command built from k8s.io/kube-state-metrics/v2 so `go mod tidy` keeps its deps.
package tools

import (
	_ "k8s.io/kube-state-metrics/v2"
)
