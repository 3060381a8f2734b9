//go:build tools

// Pins the driver's main package, so `go mod tidy` records every module it needs in go.sum.
package tools

import _ "sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver"
