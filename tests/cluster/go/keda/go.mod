// Wrapper module: builds KEDA's operator and metrics adapter from the published module. The replace
// and exclude directives are KEDA v2.21.0's own (a replace only applies in the main module, so it is
// copied here); the requirements come from KEDA's go.mod through minimal version selection, and
// go.sum pins them (made with `go list -deps` of both commands, GOFLAGS=-mod=mod).
module flowkeeper.local/keda

go 1.26.0

require github.com/kedacore/keda/v2 v2.21.0

replace github.com/nexus-rpc/nexus-proto-annotations v0.1.0 => github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.20260629224316-835bd8d49cb4

exclude github.com/go-chi/chi/v5 v5.2.3
