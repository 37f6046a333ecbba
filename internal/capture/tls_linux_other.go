//go:build linux && !amd64

package capture

import (
	"errors"

	"github.com/cilium/ebpf"
)

// tlsProbes is not built on this architecture: the TLS programs read
// function arguments from amd64 registers.
type tlsProbes struct{}

func (c *Capture) startTLS() error {
	return errors.New("TLS capture (tls.openssl, tls.go) is built for amd64 only; turn it off on this architecture")
}

func (c *Capture) scanTLS() {}

// TLSTargets is the number of (library, process) probe sets attached.
func (c *Capture) TLSTargets() int { return 0 }

func (t *tlsProbes) close() error { return nil }

func (t *tlsProbes) programs() []*ebpf.Program { return nil }
