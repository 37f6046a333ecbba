//go:build linux && !amd64

package capture

import (
	"runtime"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
)

// tlsProbes is not built on this architecture: the TLS programs read
// function arguments from amd64 registers.
type tlsProbes struct{}

// startTLS leaves TLS capture off: tls.openssl and tls.go default to true,
// and the default config must start on every architecture. Capture runs
// without plaintext: TLS connections are seen as ciphertext, counted as
// tls_ciphertext drops and given up. Said once, at start.
func (c *Capture) startTLS() error {
	c.logger.Warn("TLS capture is built for amd64 only: TLS connections stay ciphertext on this architecture (set tls.openssl: false and tls.go: false to silence this)",
		zap.String("arch", runtime.GOARCH),
		zap.Bool("tls.openssl", c.opts.TLS.OpenSSL), zap.Bool("tls.go", c.opts.TLS.Go))
	return nil
}

func (c *Capture) scanTLS() {}

// TLSTargets is the number of (library, process) probe sets attached.
func (c *Capture) TLSTargets() int { return 0 }

func (t *tlsProbes) close() error { return nil }

func (t *tlsProbes) programs() []*ebpf.Program { return nil }
