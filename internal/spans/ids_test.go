package spans

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// The id key input is built without fmt; it must stay byte for byte what
// fmt.Sprintf("%s|%s|%s|%s|%d") of the endpoints' String() gives, so that
// the ids of a connection's two ends (and of two receiver versions) match.
func TestIDInputMatchesFormat(t *testing.T) {
	aps := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:5432"),
		netip.MustParseAddrPort("10.1.2.3:1"),
		netip.MustParseAddrPort("[::1]:50051"),
		netip.MustParseAddrPort("[fe80::1%eth0]:443"),
		netip.AddrPortFrom(netip.MustParseAddr("::ffff:10.0.0.1"), 8080),
		{},
	}
	var conns []stream.ConnInfo
	for _, l := range aps {
		for _, r := range aps {
			for _, role := range []stream.Role{stream.RoleClient, stream.RoleServer, stream.RoleUnknown} {
				conns = append(conns, stream.ConnInfo{Transport: "tcp", Role: role, Local: l, Remote: r, Nonce: 1<<63 + 5})
			}
		}
	}
	conns = append(conns, stream.ConnInfo{Transport: "unix", Role: stream.RoleServer, UnixPath: "/run/pg/.s.PGSQL.5432", Nonce: 9})
	for _, c := range conns {
		client, server := c.Local.String(), c.Remote.String()
		switch {
		case c.Transport == "unix":
			client, server = "", c.UnixPath
		case c.Role == stream.RoleServer:
			client, server = server, client
		}
		want := fmt.Sprintf("%s|%s|%s|%s|%d", "grpc", c.Transport, client, server, c.Nonce)
		got := string(appendIDInput(nil, "grpc", &c))
		if got != want {
			t.Errorf("id input %q, want %q", got, want)
		}
	}
}
