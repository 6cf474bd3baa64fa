//go:build tools

// Package tools pins the commands built from github.com/kedacore/keda/v2 so `go mod tidy` keeps their deps.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
