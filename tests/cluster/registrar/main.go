// A test registrar: registers a CSI node plugin with the kubelet the way the
// node-driver-registrar sidecar would (its module is not on the Go module proxy, so neither is
// its image). It serves the kubelet's plugin registration service (pluginregistration.v1:
// GetInfo, NotifyRegistrationStatus) on a socket in <kubelet root>/plugins_registry/; the kubelet
// watches that directory, calls GetInfo, then dials the plugin's CSI endpoint and reports the
// result with NotifyRegistrationStatus.
//
// Go rather than Python grpcio: it serves the kubelet's own generated registration API
// (k8s.io/kubelet at the kubelet's version, v0.34.4), so nothing of the protocol is copied by
// hand, and it is one static binary the harness starts and stops by PID.
//
//	registrar --socket DIR/x-reg.sock --name secrets-store.csi.k8s.io --endpoint /path/csi.sock
//
// Prints "registrar: listening on PATH" when it serves, and one line per kubelet call with the
// :authority the kubelet sent.
// SIGTERM or SIGINT removes the socket and exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	registerapi.UnimplementedRegistrationServer
	info registerapi.PluginInfo
}

// authority is the :authority the caller sent (the kubelet's registration client), which a
// strict HTTP/2 server (hyper's h2) refuses when it is not a valid URI authority.
func authority(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	return strings.Join(md.Get(":authority"), ",")
}

func (s *server) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	fmt.Printf("registrar: GetInfo :authority=%q -> %s %s %s %v\n", authority(ctx), s.info.Type, s.info.Name, s.info.Endpoint, s.info.SupportedVersions)
	return &registerapi.PluginInfo{
		Type:              s.info.Type,
		Name:              s.info.Name,
		Endpoint:          s.info.Endpoint,
		SupportedVersions: s.info.SupportedVersions,
	}, nil
}

func (s *server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	fmt.Printf("registrar: NotifyRegistrationStatus :authority=%q registered=%v error=%q\n", authority(ctx), st.PluginRegistered, st.Error)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	socket := flag.String("socket", "", "registration socket to serve, in <kubelet root>/plugins_registry/")
	name := flag.String("name", "", "the CSI driver's name")
	endpoint := flag.String("endpoint", "", "the CSI driver's socket path, as the kubelet dials it")
	versions := flag.String("versions", "1.0.0", "supported versions, comma separated")
	flag.Parse()
	if *socket == "" || *name == "" || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "registrar: --socket, --name and --endpoint are required")
		os.Exit(2)
	}
	_ = os.Remove(*socket)
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "registrar: %v\n", err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	registerapi.RegisterRegistrationServer(s, &server{info: registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              *name,
		Endpoint:          *endpoint,
		SupportedVersions: strings.Split(*versions, ","),
	}})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		s.Stop()
	}()
	fmt.Printf("registrar: listening on %s\n", *socket)
	err = s.Serve(lis)
	_ = os.Remove(*socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "registrar: %v\n", err)
		os.Exit(1)
	}
}
