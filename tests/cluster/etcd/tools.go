//go:build tools

// Pins etcd's main package, so `go mod tidy` records every module it needs in go.sum.
package tools

import _ "go.etcd.io/etcd/server/v3"
