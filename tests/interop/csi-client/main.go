// Command csi-client calls a CSI node plugin's Identity (GetPluginInfo, Probe,
// GetPluginCapabilities) and Node (NodeGetCapabilities, NodeGetInfo) services over its Unix
// socket with the grpc-go and CSI spec versions of kubelet 1.34 (k8s.io/kubernetes v1.34.4
// go.mod: google.golang.org/grpc v1.72.1, github.com/container-storage-interface/spec v1.9.0).
//
//	--dial kubelet: dialled as kubelet's newGrpcConn (pkg/volume/csi/csi_client.go at v1.34.4),
//	                grpc.Dial(path, WithAuthority("localhost"), insecure, unix dialer), without
//	                its metrics interceptor, which sends nothing: :authority is `localhost`.
//	--dial path:    the same without WithAuthority, as clients that dial the plain socket path
//	                do: :authority is the socket path, which grpc-go 1.72 sends percent-encoded
//	                (/run/x/csi.sock as %2Frun%2Fx%2Fcsi.sock; grpc-go 1.56 sent it as is).
//
// Prints one JSON object on stdout, each call's response or error; exits 1 if a call failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/protoadapt"
)

type call struct {
	Response json.RawMessage `json:"response,omitempty"`
	Code     string          `json:"code,omitempty"` // gRPC status code of a failed call
	Error    string          `json:"error,omitempty"`
}

func main() {
	endpoint := flag.String("endpoint", "", "path of the CSI socket")
	dial := flag.String("dial", "kubelet", "kubelet (authority localhost) or path (authority = socket path)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	flag.Parse()

	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", target)
		}),
	}
	switch *dial {
	case "kubelet":
		opts = append(opts, grpc.WithAuthority("localhost"))
	case "path":
	default:
		fmt.Fprintf(os.Stderr, "--dial %q: kubelet or path\n", *dial)
		os.Exit(2)
	}
	conn, err := grpc.Dial(*endpoint, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	identity, node := csi.NewIdentityClient(conn), csi.NewNodeClient(conn)

	calls := map[string]call{}
	failed := false
	do := func(name string, f func(context.Context) (protoadapt.MessageV1, error)) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		resp, err := f(ctx)
		if err != nil {
			failed = true
			calls[name] = call{Code: status.Code(err).String(), Error: err.Error()}
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			return
		}
		// CSI spec v1.9.0's Go messages are generated with the v1 protobuf API.
		b, err := protojson.Marshal(protoadapt.MessageV2Of(resp))
		if err != nil {
			panic(err)
		}
		calls[name] = call{Response: b}
	}
	do("GetPluginInfo", func(ctx context.Context) (protoadapt.MessageV1, error) {
		return identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	})
	do("Probe", func(ctx context.Context) (protoadapt.MessageV1, error) {
		return identity.Probe(ctx, &csi.ProbeRequest{})
	})
	do("GetPluginCapabilities", func(ctx context.Context) (protoadapt.MessageV1, error) {
		return identity.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	})
	do("NodeGetCapabilities", func(ctx context.Context) (protoadapt.MessageV1, error) {
		return node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	})
	do("NodeGetInfo", func(ctx context.Context) (protoadapt.MessageV1, error) {
		return node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	})

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(calls); err != nil {
		panic(err)
	}
	if failed {
		os.Exit(1)
	}
}
