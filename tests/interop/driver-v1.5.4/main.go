// Command driver-client calls a provider with the Secrets Store CSI Driver v1.5.4's own client
// code: its PluginClientBuilder finds and dials <socket-dir>/<provider>.sock, its Version and
// MountContent make the calls, and MountContent writes the returned files into --target with
// the driver's atomic writer. Without --target only Version is called.
//
// The MountRequest is built as NodePublishVolume builds it in pkg/secrets-store/nodeserver.go
// at v1.5.4:
//   - attributes: JSON of the SecretProviderClass spec.parameters, overwritten key by key by
//     the volume context kubelet sends (volumeAttributes, pod info and, with tokenRequests,
//     csi.storage.k8s.io/serviceAccount.tokens). Without tokens there the driver asks its own
//     token client, which adds nothing when the CSIDriver object has no tokenRequests: so does
//     this program;
//   - secrets: JSON of the NodePublishVolume secrets as they are, so `null` (a nil map) when
//     the volume has no nodePublishSecretRef;
//   - permission: JSON of os.FileMode(0644), i.e. "420";
//   - current object versions: none (MountContent is passed nil).
//
// With --rotation-versions-json the request is built as the rotation reconciler builds it
// instead (pkg/rotation/reconciler.go at v1.5.4): attributes are the spec.parameters plus the
// four pod-info keys and the tokens only (no volumeAttributes, so no secretProviderClass and
// no csi.storage.k8s.io/ephemeral), secrets are JSON of a map made with make(), so `{}` without
// a nodePublishSecretRef, and the object versions recorded in the
// SecretProviderClassPodStatus are sent as current_object_version.
//
// :authority: v1.5.4 dials grpc.Dial(socketPath, ...) with grpc-go 1.56.3 and no
// WithAuthority, so the provider sees the socket path as is, e.g. /run/x/kvmount.sock
// (seen by a grpc-go server printing the :authority it received).
//
// Prints one JSON object on stdout; exits 1 with the error text on stderr if a call fails.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	secretsstore "sigs.k8s.io/secrets-store-csi-driver/pkg/secrets-store"
)

type file struct {
	Mode     uint32 `json:"mode"`
	Contents string `json:"contents"` // base64
}

type rpcError struct {
	Code    string `json:"code"`   // gRPC status code
	Reason  string `json:"reason"` // the driver's error reason (metrics label)
	Message string `json:"message"`
}

type result struct {
	RuntimeVersion string            `json:"runtime_version"`
	Attributes     *string           `json:"attributes,omitempty"`
	Secrets        *string           `json:"secrets,omitempty"`
	Permission     *string           `json:"permission,omitempty"`
	ObjectVersions map[string]string `json:"object_versions,omitempty"`
	Files          map[string]file   `json:"files,omitempty"`
	Error          *rpcError         `json:"error,omitempty"`
}

func main() {
	socketDir := flag.String("socket-dir", "", "directory holding <provider>.sock")
	provider := flag.String("provider", "", "SecretProviderClass spec.provider")
	paramsFile := flag.String("params-json", "", "JSON file: SecretProviderClass spec.parameters")
	contextFile := flag.String("volume-context-json", "", "JSON file: NodePublishVolume volume_context from kubelet")
	secretsFile := flag.String("secrets-json", "none", "JSON file: NodePublishVolume secrets, or none (no nodePublishSecretRef)")
	target := flag.String("target", "", "target directory; without it only Version is called")
	rotationFile := flag.String("rotation-versions-json", "", "JSON file: object versions of the pod status; builds the rotation reconciler's request")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of each call")
	flag.Parse()

	var out result
	err := run(&out, *socketDir, *provider, *paramsFile, *contextFile, *secretsFile, *target, *rotationFile, *timeout)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if encErr := enc.Encode(out); encErr != nil {
		fmt.Fprintln(os.Stderr, encErr)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(out *result, socketDir, provider, paramsFile, contextFile, secretsFile, target, rotationFile string, timeout time.Duration) error {
	// The request first, so that its shape is reported even when a call fails.
	var current map[string]string
	if target != "" {
		var err error
		if current, err = request(out, paramsFile, contextFile, secretsFile, rotationFile); err != nil {
			return err
		}
	}

	builder := secretsstore.NewPluginClientBuilder([]string{socketDir})
	defer builder.Cleanup()
	client, err := builder.Get(context.Background(), provider)
	if err != nil {
		return fail(out, "", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if out.RuntimeVersion, err = secretsstore.Version(ctx, client); err != nil {
		return fail(out, "", fmt.Errorf("Version: %w", err))
	}
	if target == "" {
		return nil
	}

	versions, reason, err := secretsstore.MountContent(ctx, client, *out.Attributes, *out.Secrets, target, *out.Permission, current)
	if err != nil {
		return fail(out, reason, fmt.Errorf("Mount: %w", err))
	}
	out.ObjectVersions = versions
	out.Files, err = readTarget(target)
	return err
}

// request sets the attributes, secrets and permission of the MountRequest and returns its
// current object versions.
func request(out *result, paramsFile, contextFile, secretsFile, rotationFile string) (map[string]string, error) {
	var parameters, volumeContext, secrets map[string]string
	if err := readJSON(paramsFile, &parameters); err != nil {
		return nil, err
	}
	if err := readJSON(contextFile, &volumeContext); err != nil {
		return nil, err
	}
	if secretsFile != "none" {
		if err := readJSON(secretsFile, &secrets); err != nil {
			return nil, err
		}
	}

	var current map[string]string
	if rotationFile == "" {
		// nodeserver.go: every volume attribute overwrites the parameter of the same name.
		for k, v := range volumeContext {
			parameters[k] = v
		}
	} else {
		if err := readJSON(rotationFile, &current); err != nil {
			return nil, err
		}
		// reconciler.go: the pod's own fields under kubelet's key names, tokens from the
		// driver's token client (here: the ones kubelet would have sent), and the secret's
		// data copied into a map that exists even without a nodePublishSecretRef.
		for _, k := range []string{secretsstore.CSIPodName, secretsstore.CSIPodNamespace, secretsstore.CSIPodUID, secretsstore.CSIPodServiceAccountName, secretsstore.CSIPodServiceAccountTokens} {
			if v, ok := volumeContext[k]; ok {
				parameters[k] = v
			}
		}
		nodePublishSecretData := make(map[string]string)
		for k, v := range secrets {
			nodePublishSecretData[k] = v
		}
		secrets = nodePublishSecretData
	}
	attributes, err := json.Marshal(parameters)
	if err != nil {
		return nil, err
	}
	secretStr, err := json.Marshal(secrets)
	if err != nil {
		return nil, err
	}
	permission, err := json.Marshal(secretsstore.FilePermission)
	if err != nil {
		return nil, err
	}
	a, s, p := string(attributes), string(secretStr), string(permission)
	out.Attributes, out.Secrets, out.Permission = &a, &s, &p
	return current, nil
}

func fail(out *result, reason string, err error) error {
	// status.Code finds a gRPC status through the %w wrapping.
	out.Error = &rpcError{Code: status.Code(err).String(), Reason: reason, Message: err.Error()}
	return err
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readTarget reads the files the atomic writer published: it names them under ..data and
// they are read through the paths a pod sees.
func readTarget(target string) (map[string]file, error) {
	files := map[string]file{}
	data, err := filepath.EvalSymlinks(filepath.Join(target, "..data"))
	if errors.Is(err, fs.ErrNotExist) {
		return files, nil // the provider returned no files
	}
	if err != nil {
		return nil, err
	}
	err = filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(path, data+string(filepath.Separator))
		info, err := os.Stat(filepath.Join(target, rel))
		if err != nil {
			return err
		}
		contents, err := os.ReadFile(filepath.Join(target, rel))
		if err != nil {
			return err
		}
		files[rel] = file{Mode: uint32(info.Mode().Perm()), Contents: base64.StdEncoding.EncodeToString(contents)}
		return nil
	})
	return files, err
}
