// Package recproxy is a loopback TCP proxy that records the bytes of every
// connection through it, as the client side sees them, so that tests can
// make capfile fixtures from real servers and clients.
package recproxy

import (
	"net"
	"sync"
	"time"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
	"github.com/ebpfotel/ebpfreceiver/internal/testutil/capfile"
)

// Proxy forwards 127.0.0.1:<port> to a target address and records traffic.
type Proxy struct {
	ln     net.Listener
	target string
	start  time.Time

	mu    sync.Mutex
	conns [][]capfile.Record
	wg    sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, start: time.Now()}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients should dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		idx := len(p.conns)
		p.conns = append(p.conns, nil)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(idx, stream.Egress, s, c)
		go p.pipe(idx, stream.Ingress, c, s)
	}
}

// pipe copies src to dst, recording each read as one record.
func (p *Proxy) pipe(idx int, dir stream.Direction, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			rec := capfile.Record{Dir: dir, Time: uint64(time.Since(p.start)), Data: append([]byte(nil), buf[:n]...)}
			p.mu.Lock()
			p.conns[idx] = append(p.conns[idx], rec)
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil { // io.EOF or a reset: either way this direction is done
			break
		}
	}
	// Half-close so the peer sees EOF the way it would without the proxy.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// Close stops the proxy, waits for all connections to end, and returns the
// records of each connection in accept order.
func (p *Proxy) Close() [][]capfile.Record {
	p.ln.Close()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}
