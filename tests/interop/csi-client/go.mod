module kvmount.test/interop/csi-client

go 1.24.0

// kubelet 1.34's versions of everything the client links (k8s.io/kubernetes v1.34.4 go.mod):
// x/net holds the HTTP/2 framer and HPACK encoder grpc-go uses.
require (
	github.com/container-storage-interface/spec v1.9.0
	golang.org/x/net v0.38.0 // indirect
	golang.org/x/sys v0.31.0 // indirect
	golang.org/x/text v0.23.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20250303144028-a0af3efb3deb // indirect
	google.golang.org/grpc v1.72.1
	google.golang.org/protobuf v1.36.5
)

require github.com/golang/protobuf v1.5.4 // indirect
