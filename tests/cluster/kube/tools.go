//go:build tools

// Pins the main packages install.sh builds, so `go mod tidy` records every module they need in
// go.sum (the build runs with -mod=readonly: go.sum is the pin).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
