// Package mlog provides the one function of monis.app/mlog that the driver's
// pkg/secrets-store calls (server.go: mlog.Fatal when its own gRPC server fails). The rest of
// mlog (Setup, LogFormat, ValidateAndSetKlogLevelAndFormatGlobally, Error) is called only by
// the driver's cmd/, which the interop clients do not import.
package mlog

import (
	"fmt"
	"os"
)

// Fatal prints err with its key/value pairs and exits, as mlog.Fatal does.
func Fatal(err error, keysAndValues ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"fatal:", err}, keysAndValues...)...)
	os.Exit(1)
}
