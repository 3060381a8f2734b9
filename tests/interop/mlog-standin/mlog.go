// Package mlog is our stand-in for the six things of monis.app/mlog the Secrets Store CSI Driver
// calls: pkg/secrets-store's Fatal (its own gRPC server failed; what the interop clients
// import), and cmd/secrets-store-csi-driver's Setup, LogFormat (FormatText, FormatJSON),
// ValidateAndSetKlogLevelAndFormatGlobally and Error (the driver binary tests/cluster runs).
// Logging only: the driver logs through klog, whose verbosity this sets from the level it is given.
package mlog

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
)

// LogFormat is how logs are written: the stand-in writes klog's text either way.
type LogFormat string

const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

// Setup prepares logging and returns the function that flushes it (nothing to flush here).
func Setup() func() {
	return func() {}
}

// ValidateAndSetKlogLevelAndFormatGlobally sets klog's verbosity (its -v flag, when registered)
// to level. Generic over the level's type (klog.Level is an int32), so the stand-in needs no klog.
func ValidateAndSetKlogLevelAndFormatGlobally[L ~int32](ctx context.Context, level L, format LogFormat) error {
	if format != FormatText && format != FormatJSON {
		return fmt.Errorf("unknown log format %q", format)
	}
	if f := flag.Lookup("v"); f != nil {
		return f.Value.Set(strconv.Itoa(int(level)))
	}
	return nil
}

// Error prints msg, err and the key/value pairs to stderr.
func Error(msg string, err error, keysAndValues ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"error:", msg, err}, keysAndValues...)...)
}

// Fatal prints err with its key/value pairs and exits, as mlog.Fatal does.
func Fatal(err error, keysAndValues ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"fatal:", err}, keysAndValues...)...)
	os.Exit(1)
}
